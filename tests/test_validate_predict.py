"""Evaluation maths on known cases; validate, predict, erf and cam on model and run checkpoints; class folders
matched by name on every set (a run's own val folders, ImageNet-V2, -Sketch, -A, -R), each tried with a missing,
an extra and a renamed folder; inference without the training engine."""
from __future__ import annotations

import math
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import ImageNetInfo
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from overlock.cli.main import main
from overlock.data import ImageFolderDataset
from overlock.classification.inference import LoadedModel, imagenet_subset, load_model, set_classes
from overlock.classification import evaluate, train
from overlock.engine.distributed import DistInfo
from test_class_folders import make_tree
from test_train_runs import make_folder, tiny_config

WNIDS = list(ImageNetInfo().label_names())
HEAD_W, HEAD_B = "head.4.weight", "head.4.bias"  # the main head's last layer (official key names)


def test_evaluate_known_case():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.2, 0.1, 0.3]])
    targets = torch.tensor([0, 2, 2, 1])
    loader = DataLoader(TensorDataset(logits, targets), batch_size=3)
    result = evaluate(nn.Identity(), loader, DistInfo())

    def ce(row, t):
        return -row[t] + math.log(sum(math.exp(v) for v in row))

    expected_loss = sum(ce(r.tolist(), int(t)) for r, t in zip(logits, targets)) / 4
    assert math.isclose(result["loss"], expected_loss, rel_tol=1e-6)
    assert result["top1"] == 25.0  # only the first row
    assert result["top5"] == 100.0 and result["images"] == 4


def test_evaluate_restricted_to_a_class_subset():
    logits = torch.tensor([[9.0, 1.0, 5.0, 2.0], [9.0, 3.0, 1.0, 2.0]])
    loader = DataLoader(TensorDataset(logits, torch.tensor([0, 1])), batch_size=2)
    result = evaluate(nn.Identity(), loader, DistInfo(), class_subset=[2, 3, 1])  # class 0 dominates outside
    # restricted logits: row 0 -> [5, 2, 1] predicts 0 (right); row 1 -> [1, 2, 3] predicts 2 (target 1: wrong)
    assert result["top1"] == 50.0
    lse = torch.logsumexp
    expected_loss = (lse(torch.tensor([5.0, 2, 1]), 0) - 5 + lse(torch.tensor([1.0, 2, 3]), 0) - 2) / 2
    assert math.isclose(result["loss"], expected_loss.item(), rel_tol=1e-6)


def test_imagenet_a_and_r_outputs_match_timms_indices(tmp_path):
    loaded = load_model("test_overlock")
    for name in ("imagenet-a", "imagenet-r"):
        shipped = pkgutil.get_data("timm.data", f"_info/imagenet_{name[-1]}_indices.txt").decode().split()
        assert set_classes(name, loaded, tmp_path).outputs == [int(i) for i in shipped]
    assert set_classes("imagenet-v2", loaded, tmp_path).outputs is None


def test_numeric_class_folders_are_ordered_as_numbers(tmp_path):
    make_tree(tmp_path, ["0", "1", "2", "10", "11"], per_class=1)
    assert ImageFolderDataset(tmp_path).classes == ["0", "1", "2", "10", "11"]


# --- a run checkpoint: validate and predict -------------------------------------------------------------------

CLASSES = ("ant", "bee", "cat", "eel")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run trained on folders of four classes; its best.pth."""
    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data", classes=CLASSES, per_class=4)
    train(tiny_config(data, root / "run", epochs=1))
    return root / "run" / "best.pth"


def _always(checkpoint: Path, output: int, out: Path) -> Path:
    """``checkpoint`` with its main head made to predict ``output`` for every image (weights zero, bias one-hot)."""
    state = torch.load(checkpoint, weights_only=True)
    weights = state["model"] if "model" in state else state
    weights[HEAD_W] = torch.zeros_like(weights[HEAD_W])
    weights[HEAD_B] = torch.nn.functional.one_hot(torch.tensor(output), len(weights[HEAD_B])).float() * 10
    torch.save(state, out)
    return out


def _exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_validate_and_predict_commands_on_a_run(run, tmp_path, capsys):
    val = run.parents[1] / "data" / "val"
    assert main(["validate", "--weights", str(run), "--data-dir", str(val), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "val: top-1" in out and "12 images" in out and "4 of 4 classes present" in out
    image = str(val / "bee" / "0.png")
    assert main(["predict", image, "--weights", str(run), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 3
    assert any(name in lines[1] for name in CLASSES)


def test_run_val_folders_missing_extra_and_renamed(run, tmp_path, capsys, caplog):
    """'ant' missing, 'dog' extra, 'eel' renamed 'Eels': stop and name them, or skip them and score the rest
    against their own outputs."""
    always_bee = _always(run, CLASSES.index("bee"), tmp_path / "bee.pth")
    val = make_tree(tmp_path / "val", ["bee", "cat", "dog", "Eels"], per_class=3, size=36)
    args = ["validate", "--weights", str(always_bee), "--data-dir", str(val), "--workers", "0"]
    message = _exit_message(args)
    assert "2 class folder(s) match none of the 4 classes: 'Eels', 'dog'" in message
    assert "'ant', 'bee', 'cat', 'eel'" in message
    assert main(args + ["--skip-unknown-classes"]) == 0
    out = capsys.readouterr().out
    assert "val: top-1 50.00%" in out  # bee right, cat wrong: the scored folders keep their own outputs
    assert "6 images" in out and "2 of 4 classes present, 2 unknown class folders skipped" in out
    assert "skipping 2 class folder(s) (6 images)" in caplog.text


def test_predict_names_come_from_the_run(run, tmp_path, capsys):
    for output, name in enumerate(CLASSES):
        rigged = _always(run, output, tmp_path / f"{name}.pth")
        image = str(run.parents[1] / "data" / "val" / "ant" / "0.png")
        assert main(["predict", image, "--weights", str(rigged), "--top-k", "1"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[-2:] == [str(output), name]


def test_predict_and_validate_bad_input_is_one_line(run, tmp_path):
    assert "image not found" in _exit_message(["predict", str(tmp_path / "no.png"), "--weights", str(run)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert "cannot read image" in _exit_message(["predict", str(broken), "--weights", str(run)])
    assert "is a run of 'test_overlock', not 'resnet18'" in _exit_message(
        ["predict", str(broken), "--model", "resnet18", "--weights", str(run)])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage")
    assert "cannot read checkpoint" in _exit_message(["validate", "--weights", str(garbage), "--data-dir",
                                                       str(tmp_path)])


def test_erf_and_cam_on_a_run_checkpoint(run, tmp_path, capsys):
    image = str(run.parents[1] / "data" / "val" / "cat" / "0.png")
    assert main(["erf", "--weights", str(run), "--images", image, "--img-size", "64", "--out",
                 str(tmp_path / "erf.png")]) == 0
    assert main(["cam", image, "--weights", str(run), "--out", str(tmp_path / "cam.png")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split(" (")[1].split(")")[0] in CLASSES
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"


# --- ImageNet models: names, robustness sets ------------------------------------------------------------------


def test_predict_names_imagenet_classes(tmp_path, capsys):
    make_tree(tmp_path, ["x"], per_class=1, size=64)
    weights = _always_imagenet(tmp_path, 1)
    assert main(["predict", str(tmp_path / "x" / "0.png"), "--model", "test_overlock", "--weights", str(weights),
                 "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("%" in line for line in lines[1:])
    assert lines[1].endswith(f"   1  {ImageNetInfo().index_to_description(1)}")


def _always_imagenet(tmp_path: Path, output: int) -> Path:
    """A bare state dict (official form) of a 1000-class test_overlock that always predicts ``output``."""
    path = tmp_path / f"always_{output}.pth"
    torch.save(timm.create_model("test_overlock").state_dict(), path)
    return _always(path, output, path)


# each set: its folders (missing most classes), one extra and one renamed folder; the output the rigged model
# predicts, and the expected top-1 once the unknown folders are skipped (one of the two scored folders right)
_A = imagenet_subset("imagenet-a")
ROBUSTNESS_TREES = {
    "imagenet-v2": (["0", "5", "1000", WNIDS[7]], 5, ["'1000'", f"'{WNIDS[7]}'"]),
    "imagenet-sketch": ([WNIDS[0], WNIDS[500], "n99999999", "goldfish"], 500, ["'goldfish'", "'n99999999'"]),
    "imagenet-a": ([_A[3], _A[10], next(w for w in WNIDS if w not in _A), "goldfish"], WNIDS.index(_A[3]),
                   ["'goldfish'", f"'{next(w for w in WNIDS if w not in _A)}'"]),
    "imagenet-r": ([imagenet_subset("imagenet-r")[0], imagenet_subset("imagenet-r")[199], "n99999999", "goldfish"],
                   WNIDS.index(imagenet_subset("imagenet-r")[199]), ["'goldfish'", "'n99999999'"]),
}


@pytest.mark.parametrize("name", list(ROBUSTNESS_TREES))
def test_robustness_sets_missing_extra_and_renamed_folders(name, tmp_path, capsys, caplog):
    folders, output, unknown = ROBUSTNESS_TREES[name]
    tree = make_tree(tmp_path / name, folders, per_class=2, size=64)
    args = ["validate", "test_overlock", "--weights", str(_always_imagenet(tmp_path, output)), f"--{name}",
            str(tree), "--workers", "0"]
    message = _exit_message(args)
    assert f"2 class folder(s) match none of the {1000 if name in ('imagenet-v2', 'imagenet-sketch') else 200}" \
           f" classes: {', '.join(unknown)}" in message
    assert main(args + ["--skip-unknown-classes"]) == 0
    out = capsys.readouterr().out
    assert f"{name}: top-1 50.00%" in out and "4 images" in out and "2 unknown class folders skipped" in out


def test_robustness_set_targets_are_the_folders_own_outputs(tmp_path):
    """Independent of the scoring: each folder's target is the output its name stands for."""
    loaded = load_model("test_overlock")
    for name, (folders, _, _) in ROBUSTNESS_TREES.items():
        tree = make_tree(tmp_path / name, folders, per_class=1)
        classes = set_classes(name, loaded, tree)
        data = ImageFolderDataset(tree, classes=classes.names, skip_unknown=True)
        for path, target in data.samples:
            output = target if classes.outputs is None else classes.outputs[target]
            expected = int(path.parent.name) if name == "imagenet-v2" else WNIDS.index(path.parent.name)
            assert output == expected, (name, path)


def test_robustness_sets_need_an_imagenet_model(run, tmp_path):
    tree = make_tree(tmp_path / "v2", ["0", "1"], per_class=1)
    for flag in ("--imagenet-v2", "--imagenet-a"):
        message = _exit_message(["validate", "--weights", str(run), flag, str(tree), "--workers", "0"])
        assert "ImageNet" in message


def test_a_model_without_class_names_needs_a_folder_per_output(tmp_path, caplog):
    model = timm.create_model("test_overlock", num_classes=3)
    loaded = LoadedModel(model, "test_overlock", lambda x: x, None, None, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="does not name its classes.*3 outputs.*this one has 2"):
        set_classes("val", loaded, make_tree(tmp_path / "two", ["a", "b"], per_class=1))
    assert set_classes("val", loaded, make_tree(tmp_path / "three", ["b", "a", "c"], per_class=1)).names == \
        ["a", "b", "c"]
    assert "scoring the 3 class folders, in order" in caplog.text


def test_inference_does_not_import_the_training_engine(run, tmp_path):
    """predict, validate, erf and cam, run in a fresh interpreter, load neither the classification trainer nor the
    training loop."""
    val = run.parents[1] / "data" / "val"
    image = val / "ant" / "0.png"
    code = (
        "import sys\n"
        "from overlock.cli.main import main\n"
        f"main(['validate', '--weights', {str(run)!r}, '--data-dir', {str(val)!r}, '--workers', '0'])\n"
        f"main(['predict', {str(image)!r}, '--weights', {str(run)!r}])\n"
        f"main(['erf', '--weights', {str(run)!r}, '--img-size', '64', '--num-random', '1', '--out', "
        f"{str(tmp_path / 'e.png')!r}])\n"
        f"main(['cam', {str(image)!r}, '--weights', {str(run)!r}, '--out', {str(tmp_path / 'c.png')!r}])\n"
        "assert 'overlock.classification.inference' in sys.modules\n"
        "trainer = {'overlock.classification.training', 'overlock.engine.loop'} & set(sys.modules)\n"
        "print('ENGINE' if trainer else 'NO ENGINE')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "NO ENGINE"
