"""``overlock ablate``: row selection, each row's configuration, reading back and resuming rows, the final
evaluation of a run stopped inside an epoch, the table files, one-line errors, and the same for segmentation rows
(``--task seg``: UperNet runs, mIoU); and (slow) two-row tables end to end, classification and segmentation,
checked against the runs' own summaries and the models' counts of ``overlock info``."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from probes import start_and_kill_at_step
from test_cli_errors import fails
from test_train_runs import make_folder, tiny_config

from overlock import ablate
from overlock.ablate import (
    SEG_COLUMNS,
    final_evaluation,
    measure_models,
    row_config,
    row_folder,
    select_rows,
    table_row,
    train_row,
    write_table,
)
from overlock.classification import TrainConfig, train, training
from overlock.cli.info import describe
from overlock.cli.main import main
from overlock.data.shapes import write_shapes_dataset
from overlock.engine.checkpoint import save_atomic
from overlock.models import ABLATIONS
from overlock.segmentation import training as seg_training
from overlock.segmentation.config import SegTrainConfig, build_segmenter, seg_preset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("ablate") / "data", per_class=4)


def test_select_rows_table_then_named_rows_without_repeats():
    rows = select_rows("tableC", ["table6/dds_model", "tableC/r4"])
    assert [r.key for r in rows] == ["tableC/r2", "tableC/r4", "tableC/r6", "tableC/r8", "table6/dds_model"]
    assert [r.key for r in select_rows(None, ["tableD/aux_0_4"])] == ["tableD/aux_0_4"]
    assert len(select_rows("table6")) == 12  # Table 6's roadmap, PlainNet to OverLoCK-XT, with its two side rows


@pytest.mark.parametrize("table, keys, message", [
    ("table9", [], "unknown ablation table 'table9'"),
    (None, ["table6/nope"], "unknown ablation row(s) table6/nope"),
    (None, [], "choose a table"),
])
def test_bad_selection_names_the_problem(table, keys, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        select_rows(table, keys)
    assert "table6, table7, tableA" in str(info.value)  # the known tables are listed


def test_row_config_takes_the_rows_model_and_options_and_the_users_win(tmp_path):
    base = TrainConfig(model="test_overlock", model_kwargs={"kernel_sizes": [5, 5, 5, 5]}, aux_weight=0.4,
                       epochs=2, seed=7)
    row = ABLATIONS["table6/dds_model"]  # trained without the auxiliary loss
    cfg = row_config(base, row, tmp_path)
    assert (cfg.model, cfg.model_kwargs, cfg.aux_weight) == ("overlock_abl_table6_dds_model", {}, 0.0)
    assert (cfg.epochs, cfg.seed, cfg.output) == (2, 7, str(tmp_path / "table6_dds_model"))
    assert row_config(base, row, tmp_path, given=["aux_weight"]).aux_weight == 0.4


def _summary(cfg: TrainConfig, top1: float = 50.0) -> dict:
    return {"model": cfg.model, "steps": 3, "final": {"top1": top1}, "best_top1": top1, "train_seconds": 1.0,
            "config": asdict(cfg)}


def test_finished_row_is_read_back_and_other_settings_are_refused(tmp_path, monkeypatch):
    cfg = TrainConfig(model="test_overlock", output=str(tmp_path / "row"), epochs=2)
    Path(cfg.output).mkdir()
    (Path(cfg.output) / "summary.json").write_text(json.dumps(_summary(cfg.updated(workers=9))))

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(training, "train", must_not_train)
    assert train_row(cfg)["final"]["top1"] == 50.0  # workers may differ between calls
    with pytest.raises(ValueError, match=r"other settings \(epochs 2 -> 3\)"):
        train_row(cfg.updated(epochs=3))


def test_unfinished_row_resumes_and_an_empty_start_restarts(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "train", lambda cfg, **kwargs: calls.append(kwargs) or _summary(cfg))
    cfg = TrainConfig(model="test_overlock", output=str(tmp_path / "row"))
    train_row(cfg)  # nothing there (or only a killed start's logs): a fresh run
    assert calls[-1] == {"overwrite": True}
    Path(cfg.output).mkdir()
    (Path(cfg.output) / "last.pth").write_bytes(b"")
    stale = Path(cfg.output) / "final_eval.json"  # left by an earlier run of this folder
    stale.write_text(json.dumps({"step": 3, "eval": {"top1": 99.0}}))
    monkeypatch.setattr(ablate, "load_training_checkpoint", lambda path: {"config": asdict(cfg)})
    train_row(cfg)
    assert calls[-1]["resume"] is True and not stale.exists()
    with pytest.raises(ValueError, match="other settings"):
        train_row(cfg.updated(seed=1))


def test_final_evaluation_of_a_run_without_one_repeats_the_trainers(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "run", epochs=1, ema_decay=0.0)
    summary = train(cfg)
    assert summary["final"]["images"] == 9
    again = final_evaluation(cfg, dict(summary, final={}))  # as for a run stopped by --max-steps
    assert again["top1"] == pytest.approx(summary["final"]["top1"])
    assert again["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "final_eval.json").read_text())["step"] == summary["steps"]


def test_table_files(tmp_path):
    lines = [
        {"row": "tableC/r2", "label": "r = 2", "model": "m2", "params_m": 16.1234, "gmacs": 0.05, "gmacs_224": 2.6,
         "images_per_s": 120.0, "top1": 81.25, "best_top1": None, "steps": 10, "train_seconds": 3.0,
         "paper_params_m": None, "paper_gflops": None, "paper_top1": None},
        {"row": "tableC/r4", "label": "r = 4", "model": "overlock_xt", "params_m": 15.9, "gmacs": 0.05,
         "gmacs_224": 2.55, "images_per_s": 130.0, "top1": 82.5, "best_top1": 82.5, "steps": 10,
         "train_seconds": 3.0, "paper_params_m": 16, "paper_gflops": 2.6, "paper_top1": None},
    ]
    csv_path, md_path, png_path = write_table(lines, tmp_path, note="small run")
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["row"] for r in read] == ["tableC/r2", "tableC/r4"]
    assert float(read[0]["params_m"]) == 16.1234 and read[0]["best_top1"] == "" and read[1]["paper_gflops"] == "2.6"
    md = md_path.read_text().splitlines()
    assert md[0].startswith("| row | label | model | params (M)") and md[-1] == "small run"
    assert md[2].split(" | ")[:4] == ["| tableC/r2", "r = 2", "m2", "16.1"]
    assert Image.open(png_path).size[0] > 300


def test_measured_sizes_match_overlock_info():
    costs = measure_models(["test_overlock"], img_size=64, batch_size=2, iters=2, warmup=0)
    info_64, info_224 = describe("test_overlock", 64), describe("test_overlock", 224)
    cost = costs["test_overlock"]
    assert cost.params_m == pytest.approx(info_64["params_m"])
    assert (cost.gmacs, cost.gmacs_224) == pytest.approx((info_64["gmacs"], info_224["gmacs"]))
    assert cost.images_per_s > 0


_ANY_FOLDER = ["--data-dir", Path(__file__).parent]  # a folder that exists: the check after it is the one tested


@pytest.mark.parametrize("argv, message", [
    (["tableZ"], "unknown ablation table 'tableZ'"),
    (["--rows", "table6/nope"], "unknown ablation row(s) table6/nope"),
    ([], "choose a table"),
    (["table6", "--model", "overlock_xt"], "--model: every row trains its own model"),
    (["table6", "--data-dir", "/nonexistent/data"], "--data-dir /nonexistent/data: no such folder"),
    (["table6", "--epochs", "0"], "--epochs must be a positive integer"),
    (["table6", "--iters", "5"], "--iters is an option of segmentation rows, not of --task cls"),
    (["table6", "--task", "seg"], "--task seg needs --data-dir"),
    (["table6", "--task", "seg", "--epochs", "2"], "--epochs is an option of classification rows, not of --task seg"),
    (["table6", "--task", "seg", "--backbone", "overlock_xt"], "--backbone: every row trains its own model"),
    (["table6", "--task", "seg", "--preset", "nope", *_ANY_FOLDER], "unknown segmentation preset 'nope'"),
    (["table6", "--task", "seg", "--dataset", "fashion_mnist"], "segmentation rows read 'ade20k' or 'folder'"),
    (["table6", "--task", "seg", "--max-steps", "5", *_ANY_FOLDER],
     "--max-steps 5: a segmentation row's budget is --iters"),
    (["table6", "--task", "seg", "--eval-every", "0", *_ANY_FOLDER],
     "--iters 80000 --eval-every 0: both must be positive"),
    (["--task", "seg", "--rows", "table6/gate", "table7/swin", *_ANY_FOLDER], "table7/swin: no segmentation backbone"),
    (["table6", "--pretrained-dir", "/nonexistent/runs"], "--pretrained-dir /nonexistent/runs: no such folder"),
    (["--rows", "table6/se", "--task", "seg", "--pretrained-dir", Path(__file__).parent, *_ANY_FOLDER],
     f"no {Path(__file__).parent / 'table6_se' / 'best.pth'} (each row starts from its own run there)"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    status, line = fails(["ablate", *argv, "--out", str(tmp_path)], capsys)
    assert status == 1 and message in line, line
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


@pytest.mark.slow
def test_two_row_table_end_to_end(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "table"
    argv = ["ablate", "--rows", "table6/dds_model", "tableD/aux_0_0", "--data-dir", str(data), "--img-size", "32",
            "--epochs", "1", "--batch-size", "4", "--seed", "3", "--speed-batch", "2", "--speed-iters", "2",
            "--out", str(out)]
    assert main(argv) == 0
    rows = [ABLATIONS["table6/dds_model"], ABLATIONS["tableD/aux_0_0"]]
    summaries = [json.loads((row_folder(out, row) / "summary.json").read_text()) for row in rows]
    with (out / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [line["row"] for line in table] == [row.key for row in rows]
    for row, summary, line in zip(rows, summaries, table):
        assert (line["label"], line["model"]) == (row.label, row.model)
        assert summary["config"]["seed"] == 3 and summary["config"]["epochs"] == 1 and summary["epochs"] == 1
        assert summary["config"]["dataset"] == "folder" and summary["config"]["aux_weight"] == 0.0
        assert float(line["top1"]) == pytest.approx(summary["final"]["top1"])
        assert int(line["steps"]) == summary["steps"] == 3  # 12 images, batch 4, one epoch
        info = describe(row.model, 32)
        assert float(line["params_m"]) == pytest.approx(info["params_m"])
        assert float(line["gmacs"]) == pytest.approx(info["gmacs"])
        assert float(line["images_per_s"]) > 0
    assert float(table[1]["paper_params_m"]) == 16 and table[0]["paper_params_m"] == ""
    assert "| table6/dds_model | DDS Model |" in (out / "table.md").read_text()
    assert (out / "table.png").stat().st_size > 0

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(training, "train", must_not_train)
    assert main(argv) == 0  # a second call reads the finished rows back
    with (out / "table.csv").open() as f:
        assert [line["top1"] for line in csv.DictReader(f)] == [line["top1"] for line in table]


@pytest.mark.slow
def test_killed_table_resumes_its_unfinished_row(data, tmp_path, monkeypatch):
    out = tmp_path / "table"
    rows = [ABLATIONS["tableD/aux_0_0"], ABLATIONS["table6/dds_model"]]
    argv = ["ablate", "--rows", *[row.key for row in rows], "--data-dir", str(data), "--img-size", "32",
            "--epochs", "1", "--batch-size", "4", "--speed-batch", "2", "--speed-iters", "1", "--out", str(out)]
    second = row_folder(out, rows[1]) / "last.pth"
    start_and_kill_at_step([*argv, "--save-every", "1"], second, 1, timeout=300)
    finished = row_folder(out, rows[0]) / "summary.json"
    assert finished.is_file() and torch.load(second, weights_only=True)["step"] < 3
    written = finished.stat().st_mtime_ns
    calls = []

    def recording_train(cfg, **kwargs):
        calls.append((cfg.output, kwargs.get("resume", False)))
        return train(cfg, **kwargs)

    monkeypatch.setattr(training, "train", recording_train)
    assert main(argv) == 0
    assert calls == [(str(row_folder(out, rows[1])), True)]  # the finished row is read back, not trained
    assert finished.stat().st_mtime_ns == written
    with (out / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(line["steps"]) for line in table] == [3, 3]
    summary = json.loads((row_folder(out, rows[1]) / "summary.json").read_text())
    assert float(table[1]["top1"]) == pytest.approx(summary["final"]["top1"])


def test_seg_row_config_is_seg_trains_and_takes_no_classification_options(tmp_path):
    base = seg_preset("shapes").updated(iters=7, seed=5, aux_weight=0.4)
    row = ABLATIONS["table6/dds_model"]  # its own aux_weight=0.0 is the Overview-Net head's, a classification option
    cfg = row_config(base, row, tmp_path / "out", given=[], pretrained_dir=tmp_path / "cls")
    assert isinstance(cfg, SegTrainConfig)
    assert (cfg.backbone, cfg.model_kwargs, cfg.aux_weight) == ("overlock_abl_table6_dds_model", {}, 0.4)
    assert (cfg.iters, cfg.seed, cfg.channels) == (7, 5, base.channels)
    assert cfg.output == str(tmp_path / "out" / "table6_dds_model")
    assert cfg.pretrained == str(tmp_path / "cls" / "table6_dds_model" / "best.pth")


def test_pretrained_dir_starts_each_seg_backbone_from_its_rows_run(tmp_path):
    row = ABLATIONS["table6/plainnet"]
    classifier = timm.create_model(row.model)
    (tmp_path / "cls" / "table6_plainnet").mkdir(parents=True)
    save_atomic({"model": classifier.state_dict(), "step": 1}, tmp_path / "cls" / "table6_plainnet" / "best.pth")
    cfg = row_config(seg_preset("shapes"), row, tmp_path / "out", pretrained_dir=tmp_path / "cls")
    backbone = build_segmenter(cfg, num_classes=4).backbone.state_dict()
    trained = classifier.state_dict()
    shared = [key for key in backbone if key in trained]
    assert len(shared) > 100 and all(key.startswith("extra_norm") for key in backbone if key not in trained)
    for key in shared:
        torch.testing.assert_close(backbone[key], trained[key], rtol=0, atol=0, msg=key)


def test_seg_rows_train_resume_and_read_back_with_the_seg_trainer(tmp_path, monkeypatch):
    calls = []

    def recording(cfg, **kwargs):
        calls.append(kwargs)
        return {"backbone": cfg.backbone, "steps": cfg.iters, "final": {"mIoU": 40.0, "aAcc": 90.0},
                "best_miou": 40.0, "config": asdict(cfg)}

    monkeypatch.setattr(seg_training, "train_segmentation", recording)
    monkeypatch.setattr(training, "train", lambda *args, **kwargs: pytest.fail("the classification trainer ran"))
    cfg = row_config(seg_preset("shapes").updated(workers=0), ABLATIONS["table6/se"], tmp_path)
    assert final_evaluation(cfg, train_row(cfg)) == {"mIoU": 40.0, "aAcc": 90.0}
    assert calls[-1] == {"overwrite": True}
    Path(cfg.output).mkdir()
    Path(cfg.output, "last.pth").write_bytes(b"")
    monkeypatch.setattr(ablate, "load_training_checkpoint", lambda path: {"config": asdict(cfg.updated(workers=3))})
    train_row(cfg.updated(save_every=2))  # a resumed row takes this call's workers, save_every and max_steps
    assert calls[-1] == {"resume": True, "overrides": {"workers": 0, "save_every": 2, "max_steps": 0}}
    with pytest.raises(ValueError, match=r"other settings \(iters 300 -> 9\)"):
        train_row(cfg.updated(iters=9))
    classification = TrainConfig(model=cfg.backbone, output=cfg.output)
    with pytest.raises(ValueError, match="holds a segmentation run, not a classification one"):
        train_row(classification)
    Path(cfg.output, "summary.json").write_text(json.dumps(recording(cfg)))
    calls.clear()
    assert train_row(cfg)["final"]["mIoU"] == 40.0 and not calls  # finished: read back


def test_seg_table_lines_and_files(tmp_path):
    cost = ablate.ModelCost(params_m=16.0, gmacs=0.1, gmacs_224=2.6, images_per_s=10.0)
    row = ABLATIONS["table6/gate"]
    never_evaluated = table_row(row, {"steps": 4, "best_miou": -1.0}, {}, cost, seg_gmacs=0.5)
    assert never_evaluated["miou"] is None and never_evaluated["best_miou"] is None
    line = table_row(row, {"steps": 4, "train_seconds": 2.0, "best_miou": 51.0}, {"mIoU": 50.0, "aAcc": 80.0},
                     cost, seg_gmacs=0.5)
    assert (line["miou"], line["aacc"], line["best_miou"], line["seg_gmacs"]) == (50.0, 80.0, 51.0, 0.5)
    assert (line["paper_params_m"], line["paper_miou"]) == (row.paper_params_m, row.paper_miou)
    assert "top1" not in line
    csv_path, md_path, png_path = write_table([line, dict(line, row="tableC/r4", miou=None)], tmp_path,
                                              columns=SEG_COLUMNS, metric="miou")
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == SEG_COLUMNS and read[0]["miou"] == "50.0" and read[1]["miou"] == ""
    header = md_path.read_text().splitlines()[0]
    assert "| UperNet GMACs (crop) | mIoU (%) | aAcc (%) | best mIoU (%) |" in header and "top-1" not in header
    assert Image.open(png_path).size[0] > 300


@pytest.mark.slow
def test_two_row_seg_table_end_to_end(tmp_path, capsys, monkeypatch):
    data = tmp_path / "shapes"
    write_shapes_dataset(data, train=8, val=2, size=32, seed=1)
    out = tmp_path / "table"
    rows = [ABLATIONS["table6/plainnet"], ABLATIONS["table6/dds_model"]]
    argv = ["ablate", "--task", "seg", "--preset", "shapes", "--rows", *[row.key for row in rows],
            "--data-dir", str(data), "--crop-size", "32", "--train-scale", "40", "32", "--test-scale", "32", "32",
            "--channels", "16", "--aux-channels", "8", "--iters", "2", "--global-batch", "2", "--batch-size", "2",
            "--seed", "3", "--speed-batch", "2", "--speed-iters", "1", "--out", str(out)]
    assert main(argv) == 0
    summaries = [json.loads((row_folder(out, row) / "summary.json").read_text()) for row in rows]
    with (out / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [line["row"] for line in table] == [row.key for row in rows]
    for row, summary, line in zip(rows, summaries, table):
        assert (line["label"], line["model"], summary["backbone"]) == (row.label, row.model, row.model)
        assert summary["config"]["seed"] == 3 and summary["config"]["dataset"] == "folder"  # implied by masks/
        assert int(line["steps"]) == summary["steps"] == 2
        assert 0 <= float(line["miou"]) <= 100 and 0 <= float(line["aacc"]) <= 100  # percent, as seg train's
        assert float(line["miou"]) == pytest.approx(summary["final"]["mIoU"])
        assert float(line["aacc"]) == pytest.approx(summary["final"]["aAcc"])
        info = describe(row.model, 32)
        assert float(line["params_m"]) == pytest.approx(info["params_m"])
        assert float(line["gmacs"]) == pytest.approx(info["gmacs"])
        assert float(line["seg_gmacs"]) > 0 and float(line["images_per_s"]) > 0
    assert "top1" not in table[0] and "| table6/plainnet | PlainNet |" in (out / "table.md").read_text()
    assert (out / "table.png").stat().st_size > 0

    train_segmentation = seg_training.train_segmentation
    monkeypatch.setattr(seg_training, "train_segmentation", lambda *a, **k: pytest.fail("a finished row trained"))
    assert main(argv) == 0  # a second call reads the finished rows back
    with (out / "table.csv").open() as f:
        assert [line["miou"] for line in csv.DictReader(f)] == [line["miou"] for line in table]

    calls = []

    def recording(cfg, **kwargs):
        calls.append((cfg.output, kwargs.get("resume", False)))
        return train_segmentation(cfg, **kwargs)

    (row_folder(out, rows[1]) / "summary.json").unlink()  # as if killed after its last checkpoint
    monkeypatch.setattr(seg_training, "train_segmentation", recording)
    assert main(argv) == 0
    assert calls == [(str(row_folder(out, rows[1])), True)]  # resumed from last.pth (nothing left to train)
    with (out / "table.csv").open() as f:
        assert [line["miou"] for line in csv.DictReader(f)] == [line["miou"] for line in table]
