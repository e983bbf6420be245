"""Every user error ends the command with one line naming the problem and a non-zero exit status, never a
traceback: unknown models, missing, unreadable, corrupt or mismatched files (malicious ones: test_safe_loading.py),
non-image inputs, empty or missing folders, invalid numbers; and the model is named the same way everywhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from overlock.cli.main import main
from test_train_runs import make_folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    data = make_folder(root / "data", per_class=2)
    weights = root / "test_overlock.pth"
    torch.save(timm.create_model("test_overlock").state_dict(), weights)
    truncated = root / "truncated.pth"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbage = root / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    bad_safetensors = root / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    text = root / "notes.txt"
    text.write_text("not an image")
    (root / "empty").mkdir()
    return dict(data=data, image=data / "val" / "ant" / "0.png", weights=weights, truncated=truncated,
                garbage=garbage, bad_safetensors=bad_safetensors, text=text, empty=root / "empty",
                missing=root / "missing", out=root / "out")


def fails(argv: list[str], capsys) -> tuple[int, str]:
    """Run the command, which must fail: its exit status and its one line of error."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    code = exit_info.value.code
    if isinstance(code, str):  # a message: Python prints it and exits with status 1
        status, message = 1, code
    else:  # the argument parser printed its line itself
        status, message = code, capsys.readouterr().err.strip()
    assert status != 0
    assert "\n" not in message and "Traceback" not in message, message
    return status, message


def _cases(f: dict[str, Path]) -> dict[str, tuple[list, str]]:
    image, data = f["image"], f["data"]
    train = ["train", "--data-dir", data, "--img-size", "32", "--workers", "0", "--output", f["out"]]
    return {
        # unknown models
        "predict unknown model": (["predict", image, "--model", "nope"], "unknown model 'nope'"),
        "validate unknown model": (["validate", "--model", "nope", "--data-dir", data / "val"], "unknown model"),
        "erf unknown model": (["erf", "--model", "nope"], "unknown model"),
        "cam unknown model": (["cam", image, "--model", "nope"], "unknown model"),
        "export unknown model": (["export", f["out"], "--model", "nope"], "unknown model"),
        "train unknown model": ([*train, "--model", "nope"], "unknown model 'nope'"),
        "info unknown model": (["info", "nope"], "unknown model(s): nope"),
        "benchmark unknown model": (["benchmark", "nope", "--iters", "1"], "unknown model"),
        # missing, unreadable, corrupt, mismatched files
        "missing weights": (["predict", image, "--model", "test_overlock", "--weights", f["missing"]],
                            "checkpoint file not found"),
        "missing pretrained": ([*train, "--model", "test_overlock", "--pretrained", f["missing"]],
                               "checkpoint file not found"),
        "missing checkpoint to convert": (["convert", f["missing"], f["out"]], "checkpoint file not found"),
        "unreadable weights": (["validate", "--weights", f["garbage"], "--data-dir", data / "val"],
                               "cannot read checkpoint file"),
        "truncated weights": (["predict", image, "--model", "test_overlock", "--weights", f["truncated"]],
                              "truncated or corrupt"),
        "corrupt safetensors": (["predict", image, "--model", "test_overlock", "--weights", f["bad_safetensors"]],
                                "cannot read safetensors file"),
        "mismatched weights": (["predict", image, "--model", "overlock_xt", "--weights", f["weights"]],
                               "checkpoint does not fit the model; missing keys"),
        "no run to resume": (["train", "--resume", "--output", f["empty"]], "no checkpoint to resume"),
        # inputs that are not images
        "predict non-image": (["predict", f["text"], "--model", "test_overlock"], "cannot read image"),
        "erf non-image": (["erf", "--model", "test_overlock", "--images", f["text"], "--img-size", "64"],
                          "cannot read image"),
        "cam non-image": (["cam", f["text"], "--model", "test_overlock"], "cannot read image"),
        "missing image": (["cam", f["missing"], "--model", "test_overlock"], "image not found"),
        # empty and missing folders
        "validate empty folder": (["validate", "--model", "test_overlock", "--data-dir", f["empty"]],
                                  "has no class folders"),
        "validate missing folder": (["validate", "--model", "test_overlock", "--data-dir", f["missing"]],
                                    "folder not found"),
        "train missing folder": (["train", "--data-dir", f["missing"], "--output", f["out"]],
                                 "image folder not found"),
        "train empty folder": (["train", "--data-dir", f["empty"], "--output", f["out"]], "image folder not found"),
        # invalid numbers
        "train negative epochs": ([*train, "--epochs", "-1"], "--epochs must be a positive integer, got -1"),
        "train zero batch": ([*train, "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        "train negative lr": ([*train, "--lr", "-1"], "--lr must be a positive number, got -1.0"),
        "train nan lr": ([*train, "--lr", "nan"], "--lr must be a positive number, got nan"),
        "train text epochs": ([*train, "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        "predict zero top-k": (["predict", image, "--top-k", "0"], "--top-k: expected a positive integer, got 0"),
        "validate zero batch": (["validate", "--batch-size", "0"], "--batch-size: expected a positive integer"),
        "validate crop over 1": (["validate", "--crop-pct", "1.5"], "--crop-pct: expected a number in (0, 1]"),
        "erf stage out of range": (["erf", "--stage", "7"], "argument --stage: invalid choice: 7"),
        "erf stage the model lacks": (["erf", "--model", "test_vit", "--stage", "4", "--img-size", "32"],
                                      "test_vit: the model has no stage 4 (stride 32)"),
        "erf empty folder": (["erf", "--model", "test_overlock", "--images", f["empty"]], "no image files in this folder"),
        "erf missing folder": (["erf", "--model", "test_overlock", "--images", f["missing"]],
                               "image or folder not found"),
        "erf no model": (["erf", "--img-size", "32"], "name a model with --model NAME"),
        "cam stage the model lacks": (["cam", image, "--model", "test_vit"], "the model has no stage 4 (stride 32)"),
        "cam target out of range": (["cam", image, "--model", "test_overlock", "--target", "1000"],
                                    "--target 1000: the model has 1000 classes"),
        "export features-only folder": (["export", f["out"], "--model", "test_overlock", "--features-only"],
                                        "--features-only applies to --format onnx and pt2"),
    }


CASE_NAMES = list(_cases({k: Path(k) for k in ("image", "data", "out", "weights", "truncated", "garbage",
                                               "bad_safetensors", "text", "empty", "missing")}))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_user_error_is_one_line(files, case, capsys):
    argv, expected = _cases(files)[case]
    status, message = fails(argv, capsys)
    assert expected in message, message
    command = str(argv[0])
    assert message.startswith(f"overlock {command}: "), message
    assert status == (2 if "argument" in message else 1)


def test_process_exit_status_and_stderr(files):
    """In a real process: status 1 and one line on stderr for a bad number."""
    result = subprocess.run([sys.executable, "-m", "overlock.cli.main", "train", "--epochs", "-1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["overlock train: --epochs must be a positive integer, got -1"]


def test_every_single_model_command_takes_model_as_an_option(files, capsys):
    """--model NAME for train, predict, validate, erf, cam and export; validate, erf and cam also keep the name as
    their first argument (their earlier form), and two different names are an error."""
    image = files["image"]
    assert main(["cam", str(image), "--model", "test_overlock", "--out", str(files["out"].parent / "a.png")]) == 0
    assert main(["cam", "test_overlock", str(image), "--out", str(files["out"].parent / "b.png")]) == 0
    _, message = fails(["cam", "test_overlock", str(image), "--model", "overlock_xt"], capsys)
    assert "two models named" in message
    for command in ("train", "predict", "validate", "erf", "cam", "export"):
        with pytest.raises(SystemExit):
            main([command, "-h"])
        assert "--model MODEL" in capsys.readouterr().out, command
