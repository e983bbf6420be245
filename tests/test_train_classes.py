"""Training on folders: val/ folders are matched to train/'s classes by name (a missing, an extra and a renamed
folder), checkpoints keep the real class names, and a resumed run refuses class folders that changed."""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from overlock.cli.main import main
from overlock.data import ClassFolderError
from overlock.classification import train
from overlock.engine.checkpoint import CheckpointError
from overlock.classification.training import build_datasets
from test_class_folders import make_tree
from test_train_runs import cli_args, make_folder, tiny_config


def _val_targets(val) -> dict[str, int]:
    return {path.parent.name: target for path, target in val.samples}


def test_val_folders_map_to_the_training_classes_by_name(tmp_path):
    data = make_folder(tmp_path, classes=("ant", "bee", "cat"), per_class=1)
    shutil.rmtree(data / "val" / "ant")  # missing: bee and cat keep their outputs
    _, val, classes, _ = build_datasets(tiny_config(data, tmp_path / "out"))
    assert classes == ["ant", "bee", "cat"] and _val_targets(val) == {"bee": 1, "cat": 2}


@pytest.mark.parametrize("extra, hint", [("dog", ""), ("Cat", " (class 'cat' lives in folder 'cat')")])
def test_unknown_val_folders_stop_the_run_or_are_skipped(extra, hint, tmp_path, caplog):
    """An extra folder, and a renamed one ('cat' typed as 'Cat'): an error naming it, or skipped on request."""
    data = make_folder(tmp_path, classes=("ant", "bee", "cat"), per_class=1)
    if extra == "Cat":
        (data / "val" / "cat").rename(data / "val" / "Cat")
    else:
        make_tree(data / "val", [extra], per_class=3)
    cfg = tiny_config(data, tmp_path / "out")
    expected_message = f"1 class folder(s) match none of the 3 classes: '{extra}'{hint}"
    with pytest.raises(ClassFolderError, match=re.escape(expected_message)):
        build_datasets(cfg)
    _, val, _, _ = build_datasets(cfg.updated(skip_unknown_classes=True))
    expected = {"ant": 0, "bee": 1} if extra == "Cat" else {"ant": 0, "bee": 1, "cat": 2}
    assert _val_targets(val) == expected and val.skipped_folders == [extra]
    assert f"skipping 1 class folder(s) (3 images) that match none of the 3 classes: '{extra}'" in caplog.text


def test_train_command_names_unknown_val_folders_in_one_line(tmp_path):
    data = make_folder(tmp_path / "data", classes=("T-shirt%2Ftop", "bee"), per_class=1)
    (data / "val" / "T-shirt%2Ftop").rename(data / "val" / "T-shirt_top")
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tiny_config(data, tmp_path / "out")))
    message = str(exit_info.value.code)
    assert message.startswith("overlock train: ") and "\n" not in message
    assert "'T-shirt_top' (class 'T-shirt/top' lives in folder 'T-shirt%2Ftop')" in message


def test_checkpoints_keep_the_real_class_names_and_resume_checks_them(tmp_path):
    data = make_folder(tmp_path / "data", classes=("T-shirt%2Ftop", "bee"), per_class=2)
    cfg = tiny_config(data, tmp_path / "run", epochs=1, batch_size=2)
    train(cfg.updated(max_steps=1))
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["classes"] == ["T-shirt/top", "bee"]
    make_tree(data / "train", ["cat"], per_class=2)
    with pytest.raises(CheckpointError, match="classes of .* changed since the run started .*new: 'cat'"):
        train(cfg, resume=True)
    shutil.rmtree(data / "train" / "cat")
    assert train(cfg, resume=True, overrides={"max_steps": 0})["steps"] == 2


def test_a_run_on_a_tree_with_missing_extra_and_renamed_val_folders_names_its_outputs_by_train(tmp_path, capsys):
    """val/ without 'ant', with an extra 'dog' and 'cat' typed 'Cat' (both skipped): the checkpoint's classes and
    the names predict prints are train/'s, in train/'s order."""
    data = make_folder(tmp_path / "data", classes=("ant", "bee", "cat"), per_class=2)
    shutil.rmtree(data / "val" / "ant")
    (data / "val" / "cat").rename(data / "val" / "Cat")
    make_tree(data / "val", ["dog"], per_class=1)
    summary = train(tiny_config(data, tmp_path / "run", epochs=1, batch_size=2, skip_unknown_classes=True))
    assert summary["final"]["images"] == 3  # only bee/ was scored
    best = tmp_path / "run" / "best.pth"
    assert torch.load(best, weights_only=True)["classes"] == ["ant", "bee", "cat"]
    assert main(["predict", str(data / "train" / "cat" / "0.png"), "--weights", str(best), "--top-k", "3"]) == 0
    printed = [line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(printed) == [["0", "ant"], ["1", "bee"], ["2", "cat"]]
