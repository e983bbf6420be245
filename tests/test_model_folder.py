"""Weights out as timm / Hugging Face model folders: a run's best weights (also written as .safetensors) exported
by ``overlock export`` and official checkpoints converted by ``overlock convert`` reload through
``timm.create_model("local-dir:DIR")`` with the same outputs, their class names and a model card the Hub reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import FIXTURE_INPUTS, rel_err
from huggingface_hub import ModelCard

from overlock.analysis import count_macs, count_params
from overlock.cli.main import main
from overlock.export import _architecture_details, deploy_form
from overlock.classification.inference import load_model
from overlock.classification import train
from test_train_runs import make_folder, tiny_config

CLASSES = ("ant", "bee", "cat")
HUB_FILES = {"config.json", "model.safetensors", "README.md"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data", classes=CLASSES, per_class=4)
    train(tiny_config(data, root / "run", epochs=1))
    return root / "run"


def _load_folder(folder: Path) -> torch.nn.Module:
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def test_runs_write_best_and_ema_weights_as_safetensors(run, capsys):
    for stem in ("best", "ema"):
        from_pth = load_model(None, str(run / f"{stem}.pth"))
        from_safetensors = load_model(None, str(run / f"{stem}.safetensors"))
        assert from_safetensors.classes == list(CLASSES)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(from_safetensors.model(x), from_pth.model(x))
    image = str(run.parent / "data" / "val" / "bee" / "0.png")
    outputs = []
    for weights in ("best.pth", "best.safetensors"):
        assert main(["predict", image, "--weights", str(run / weights)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_exported_run_reloads_through_timm(run, tmp_path, capsys):
    folder = tmp_path / "hub"
    assert main(["export", str(folder), "--weights", str(run / "best.pth")]) == 0
    assert "local-dir" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == HUB_FILES
    expected = load_model(None, str(run / "best.pth")).model
    reloaded = _load_folder(folder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected(x))
    assert reloaded.pretrained_cfg["label_names"] == list(CLASSES)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_overlock" and config["model_args"]["kernel_sizes"] == [5, 5, 5, 5]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_model_card(run, tmp_path):
    """The card's figures are the model's own (counted here independently of the card's code) and the run's."""
    folder = tmp_path / "hub"
    main(["export", str(folder), "--weights", str(run / "best.safetensors")])
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "timm"
    text = card.text
    model = load_model(None, str(run / "best.pth")).model
    deployed = deploy_form(model)
    assert f"{count_params(model) / 1e6:.2f} M in this folder; {count_params(deployed) / 1e6:.2f} M for inference" \
        in text
    assert f"{count_macs(deployed, (3, 32, 32)) / 1e6:.2f} M at 32x32" in text
    best = torch.load(run / "best.pth", weights_only=True)
    assert f"epoch {best['epoch']}, validation top-1 {best['top1']:.2f} %" in text
    summary = json.loads((run / "summary.json").read_text())
    assert f"top-1 {summary['final']['top1']:.2f} %" in text
    assert "Apache-2.0" in text and "@inproceedings{lou2025overlock" in text
    assert "huggingface_hub.upload_folder" in text


@pytest.mark.parametrize("name, details", [
    ("test_overlock", "depths [1, 1, 1, 1], Focus-Net depths [2, 2], widths [16, 32, 64, 96]"),
    ("overlock_abl_table6_recurrent_model", "depths [2, 2, 9, 4], no Focus-Net, widths [64, 112, 256, 360]"),
])
def test_model_card_architecture_line_names_the_depths(name, details):
    """The card's architecture line for the decomposed model and for an ablation without a Focus-Net."""
    assert details in _architecture_details(timm.create_model(name, device="meta"))


def test_export_refuses_a_folder_with_files(run, tmp_path, capsys):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="already holds files"):
        main(["export", str(folder), "--weights", str(run / "best.pth")])
    assert main(["export", str(folder), "--weights", str(run / "best.pth"), "--overwrite"]) == 0


WRAPPERS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 299},
    "model": lambda sd: {"model": sd},
    "state_dict_ema": lambda sd: {"state_dict_ema": {f"module.{k}": v for k, v in sd.items()}, "state_dict": {}},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_convert_official_checkpoint(official, tmp_path, wrapper, capsys):
    """The official implementation's weights (fixture: 10 classes) in each release wrapper: the variant is
    recognised, and the folder reproduces the official outputs."""
    path = tmp_path / "official.pth"
    torch.save(WRAPPERS[wrapper](official["state_dict"]), path)
    folder = tmp_path / "converted"
    assert main(["convert", str(path), str(folder)]) == 0
    assert "test_overlock with 10 classes" in capsys.readouterr().out
    model = _load_folder(folder)
    with torch.no_grad():
        for size in FIXTURE_INPUTS:
            assert rel_err(model(official["inputs"][size]), official["eval_logits"][size]) <= 1e-5
    assert {p.name for p in folder.iterdir()} == HUB_FILES


def test_convert_recognises_the_variant_and_form(tmp_path, capsys):
    """A deploy-form (re-parameterised) checkpoint of 1000 classes: its variant, ImageNet's class names."""
    torch.manual_seed(0)
    source = timm.create_model("overlock_xt_reparam").eval()
    torch.save({"model": source.state_dict()}, tmp_path / "xt.pth")
    assert main(["convert", str(tmp_path / "xt.pth"), str(tmp_path / "xt")]) == 0
    assert "overlock_xt_reparam with 1000 classes" in capsys.readouterr().out
    model = _load_folder(tmp_path / "xt")
    assert model.pretrained_cfg["label_names"][:2] == ["n01440764", "n01443537"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_convert_errors(tmp_path):
    torch.save({"model": timm.create_model("resnet18").state_dict()}, tmp_path / "resnet.pth")
    with pytest.raises(SystemExit, match="not an OverLoCK classification checkpoint"):
        main(["convert", str(tmp_path / "resnet.pth"), str(tmp_path / "a")])
    torch.save(timm.create_model("test_overlock").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(SystemExit, match="checkpoint does not fit the model; missing keys"):
        main(["convert", str(tmp_path / "tiny.pth"), str(tmp_path / "b"), "--model", "overlock_t"])
    with pytest.raises(SystemExit, match="'resnet18' is not a registered OverLoCK model"):
        main(["convert", str(tmp_path / "tiny.pth"), str(tmp_path / "c"), "--model", "resnet18"])
