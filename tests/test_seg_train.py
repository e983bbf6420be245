"""Segmentation training runs: it learns (generated shapes), a killed command-line run resumes to the same end,
the run folder, ``overlock seg validate`` on the run's checkpoint, and bad data through the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overlock.cli.main import main
from overlock.data.shapes import write_shapes_dataset
from overlock.segmentation.config import seg_preset
from overlock.segmentation.training import train_segmentation
from probes import start_and_kill_at_step

SMALL = ["--backbone", "test_overlock", "--model-kwargs", '{"kernel_sizes": [5, 5, 5, 5], "sub_depths": [1, 1]}',
         "--channels", "16", "--aux-channels", "8", "--crop-size", "32", "--train-scale", "40", "32",
         "--test-scale", "32", "32", "--global-batch", "4", "--batch-size", "2", "--iters", "10", "--eval-every", "5",
         "--lr", "1e-3", "--warmup-iters", "2", "--workers", "0", "--no-sync-bn", "--drop-path", "0.1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, train=16, val=4, size=32, seed=1)
    return root


def seg_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["seg", "train", "--preset", "shapes", "--data-dir", str(data), "--output", str(out), *SMALL, *extra]


@pytest.mark.slow
def test_a_small_upernet_learns_the_shapes(tmp_path):
    """The shapes preset through the real pipeline: mIoU >= 80 within 200 iterations on the CPU."""
    data = tmp_path / "data"
    write_shapes_dataset(data, train=128, val=32, size=64, seed=0)
    cfg = seg_preset("shapes").updated(data_dir=str(data), output=str(tmp_path / "run"), iters=200)
    summary = train_segmentation(cfg)
    assert summary["steps"] == 200
    assert summary["final"]["mIoU"] >= 80, summary["final"]
    assert all(c["IoU"] >= 60 for c in summary["final"]["per_class"].values()), summary["final"]["per_class"]


def test_killed_run_resumes_to_the_same_end(shapes, tmp_path):
    assert main(seg_args(shapes, tmp_path / "ref")) == 0
    killed = tmp_path / "killed"
    last = killed / "last.pth"
    start_and_kill_at_step(seg_args(shapes, killed, "--save-every", "1"), last, 3, timeout=300)
    interrupted = torch.load(last, weights_only=True)  # every part loads weights-only
    assert 3 <= interrupted["step"] < 10
    assert main(["seg", "train", "--output", str(killed), "--resume", "--save-every", "0"]) == 0
    ref, resumed = torch.load(tmp_path / "ref" / "last.pth", weights_only=True), torch.load(last, weights_only=True)
    assert resumed["step"] == ref["step"] == 10
    for key, value in ref["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    def rows(run: str, name: str) -> list[str]:  # the logs read as one run: no repeated rows, same values
        lines = (tmp_path / run / name).read_text().strip().splitlines()
        return [",".join(line.split(",")[:-1]) if name == "metrics.csv" else line for line in lines]  # less time

    assert rows("killed", "per_class.csv") == rows("ref", "per_class.csv")
    assert [r.split(",")[:8] for r in rows("killed", "metrics.csv")] == [r.split(",")[:8]
                                                                         for r in rows("ref", "metrics.csv")]


def test_run_folder_and_validate_on_its_checkpoint(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(seg_args(shapes, out, "--iters", "5")) == 0
    for name in ("last.pth", "best.pth", "metrics.csv", "per_class.csv", "steps.csv", "summary.json", "curves.png"):
        assert (out / name).is_file(), name
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5 and set(summary["final"]["per_class"]) == {"background", "disc", "square",
                                                                           "triangle"}
    capsys.readouterr()
    assert main(["seg", "validate", "--weights", str(out / "best.pth"), "--data-dir", str(shapes), "--dataset",
                 "folder", "--scale", "32", "32", "--workers", "0", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "triangle" in printed
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["mIoU"] == pytest.approx(summary["final"]["mIoU"])  # same model, data and settings
    assert main(["seg", "validate", "--weights", str(out / "best.pth"), "--data-dir", str(shapes), "--dataset",
                 "folder", "--scale", "32", "32", "--workers", "0", "--mode", "slide", "--crop-size", "32", "32",
                 "--stride", "21", "21", "--flip", "--ratios", "0.75", "1.0"]) == 0


def test_bad_data_stops_the_command_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "masks" / "train").mkdir(parents=True)
    (empty / "classes.txt").write_text("a\nb\n")
    for args, message in (
        (seg_args(empty, tmp_path / "o1"), "holds no images"),
        (seg_args(tmp_path / "missing", tmp_path / "o2"), "data folder not found"),
        (["seg", "validate", "--weights", str(tmp_path / "none.pth"), "--data-dir", str(empty)], "not found"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert str(exc.value).startswith("overlock seg ") and message in str(exc.value)
        assert "\n" not in str(exc.value)


def test_bad_samples_in_training_are_counted(shapes, tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, train=8, val=2, size=32, seed=2)
    (data / "masks" / "train" / "00001.png").write_bytes(b"broken")
    (data / "masks" / "train" / "00003.png").unlink()
    assert main(seg_args(data, tmp_path / "run", "--iters", "4", "--eval-every", "4")) == 0
    row = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert int(row[7]) > 0  # skipped_train: the broken mask, each time it was drawn


def test_two_processes_under_torchrun(shapes, tmp_path):
    """torchrun with 2 gloo processes of 2 images: one step each for a global batch of 4, evaluation shared out."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "overlock.cli.main", *seg_args(shapes, out, "--iters", "4",
                                                                         "--eval-every", "4")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["step"] == 4 and state["micro_in_epoch"] == 4  # 16 images, 2 x 2 a step: one pass
    import json

    final = json.loads((out / "summary.json").read_text())["final"]
    assert final["images"] == 4 and final["skipped"] == 0  # the 4 validation images, split over the processes


def test_progress_off_a_terminal_is_log_lines_without_bar_redraws(shapes, tmp_path):
    """``seg train`` with its output captured (a pipe, not a terminal) reports progress through the shared Progress:
    log lines, and none of a bar's carriage-return redraws."""
    cmd = [sys.executable, "-m", "overlock.cli.main", *seg_args(shapes, tmp_path / "run", "--iters", "4",
                                                                "--eval-every", "4")]
    result = subprocess.run(cmd, capture_output=True, timeout=600)  # bytes: text mode would turn \r into \n
    assert result.returncode == 0, result.stderr[-3000:]
    assert b"\r" not in result.stdout + result.stderr
    assert b"overlock.engine.progress: iterations: 4/4 iterations, loss " in result.stderr
