"""No file a user passes runs code: a pickle whose loading would create a file is refused, with one line naming it,
by every entry point that reads weights (and the file is never created); official and common checkpoints, and
every file a run writes, still load as weights only."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from overlock.cli.main import main
from overlock.weights_file import UnsafeCheckpointError, read_checkpoint, unsafe_globals
from test_train_runs import make_folder


class CreatesFile:
    """Pickled as a call of ``open(path, "w")``: unpickling it creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_checkpoint(folder: Path, name: str = "evil.pth", legacy: bool = False) -> tuple[Path, Path]:
    """A checkpoint that looks like weights and whose loading would create ``folder / 'PWNED'``."""
    marker = folder / "PWNED"
    path = folder / name
    payload = {"state_dict": timm.create_model("test_overlock").state_dict(), "meta": CreatesFile(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


def _one_line_refusal(argv: list[str], path: Path) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message and "refusing to load" in message
    return message


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    return malicious_checkpoint(tmp_path)


def test_the_payload_runs_when_unpickled(tmp_path):
    """The test file is truly malicious: an ordinary (unsafe) load creates the file, so the tests below would fail
    if any entry point loaded it so."""
    path, marker = malicious_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_create_model_refuses_it(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.pth.*io.open"):
        timm.create_model("test_overlock", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "validate", "erf", "cam"])
def test_inference_commands_refuse_it(evil, tmp_path, command):
    path, marker = evil
    image = make_folder(tmp_path / "data", per_class=1) / "val" / "ant" / "0.png"
    argv = {
        "predict": ["predict", str(image), "--weights", str(path)],
        "validate": ["validate", "--weights", str(path), "--data-dir", str(image.parents[1]), "--workers", "0"],
        "erf": ["erf", "--weights", str(path), "--img-size", "64", "--num-random", "1",
                "--out", str(tmp_path / "erf.png")],
        "cam": ["cam", str(image), "--weights", str(path), "--out", str(tmp_path / "cam.png")],
    }[command]
    _one_line_refusal(argv, path)
    _one_line_refusal(argv + ["--model", "test_overlock"], path)  # also as the weights of a named timm model
    assert not marker.exists()


def test_train_pretrained_and_resume_refuse_it(evil, tmp_path):
    path, marker = evil
    data = make_folder(tmp_path / "data", per_class=2)
    common = ["--model", "test_overlock", "--data-dir", str(data), "--img-size", "32", "--epochs", "1", "--workers",
              "0", "--batch-size", "2"]
    _one_line_refusal(["train", *common, "--pretrained", str(path), "--output", str(tmp_path / "run1")], path)
    run = tmp_path / "run2"
    run.mkdir()
    last = run / "last.pth"
    last.write_bytes(path.read_bytes())
    _one_line_refusal(["train", "--resume", "--output", str(run)], last)
    assert not marker.exists()


def test_legacy_format_pickle_is_refused_too(tmp_path):
    path, marker = malicious_checkpoint(tmp_path, "legacy.pth", legacy=True)
    with pytest.raises(UnsafeCheckpointError, match="io.open"):
        read_checkpoint(path)
    assert not marker.exists()


def test_the_refusal_names_what_the_file_would_call(evil):
    path, _ = evil
    assert unsafe_globals(path) == ["io.open"]


def test_plain_data_beside_the_weights_still_loads(tmp_path):
    """What timm's training checkpoints store beside the weights (argparse.Namespace, numbers, RNG state tensors)
    loads by both routes; the four official wrappers are tested in test_checkpoints.py."""
    weights = timm.create_model("test_overlock").state_dict()
    saved = {"state_dict": weights, "args": argparse.Namespace(lr=0.1), "metric": 84.2, "epoch": 299,
             "rng": torch.get_rng_state()}
    torch.save(saved, tmp_path / "ckpt.pth")
    loaded = read_checkpoint(tmp_path / "ckpt.pth")
    assert loaded["args"].lr == 0.1 and loaded["metric"] == 84.2
    assert torch.equal(loaded["state_dict"]["head.4.weight"], weights["head.4.weight"])
    overlay = dict(file=str(tmp_path / "ckpt.pth"))
    model = timm.create_model("test_overlock", pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(model.state_dict()["head.4.weight"], weights["head.4.weight"])


def test_objects_other_than_data_are_refused_by_name(tmp_path):
    """A numpy scalar is harmless, but weights-only loading (ours and timm's) does not build it: refused, named."""
    torch.save({"state_dict": {}, "metric": np.float64(84.2)}, tmp_path / "numpy.pth")
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        read_checkpoint(tmp_path / "numpy.pth")


def test_the_command_exits_with_one_line_and_status_1(evil, tmp_path):
    """The real process: exit status 1, one line on stderr, no traceback, no file created."""
    path, marker = evil
    image = make_folder(tmp_path / "data", per_class=1) / "val" / "ant" / "0.png"
    result = subprocess.run([sys.executable, "-m", "overlock.cli.main", "predict", str(image), "--weights", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("overlock predict: refusing to load")
    assert "Traceback" not in result.stderr
    assert not marker.exists()
