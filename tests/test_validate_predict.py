"""Evaluation maths on known cases, the robustness-set class subsets, and the validate/predict commands."""
from __future__ import annotations

import math
import pkgutil

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from overlock.cli.main import main
from overlock.cli.validate import subset_indices
from overlock.data import ImageFolderDataset
from overlock.train import evaluate, train
from overlock.train.distributed import DistInfo
from test_train_runs import make_folder, tiny_config


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


def test_imagenet_a_and_r_subsets_match_timms_indices():
    for name in ("imagenet-a", "imagenet-r"):
        shipped = pkgutil.get_data("timm.data", f"_info/imagenet_{name[-1]}_indices.txt").decode().split()
        assert subset_indices(name) == [int(i) for i in shipped]
    assert subset_indices("imagenet-v2") is None


def test_numeric_class_folders_are_ordered_as_numbers(tmp_path):
    from PIL import Image

    for name in ("0", "1", "2", "10", "11"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    assert ImageFolderDataset(tmp_path).classes == ["0", "1", "2", "10", "11"]


def test_validate_and_predict_commands_on_a_run(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=4)
    train(tiny_config(data, tmp_path / "run", epochs=1))
    best = str(tmp_path / "run" / "best.pth")
    assert main(["validate", "--weights", best, "--data-dir", str(data / "val"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "val: top-1" in out and "9 images" in out
    image = str(data / "val" / "bee" / "0.png")
    assert main(["predict", image, "--weights", best, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 3
    assert any(name in lines[1] for name in ("ant", "bee", "cat"))


def test_predict_names_imagenet_classes(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    assert main(["predict", str(image), "--model", "test_overlock", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("%" in line for line in lines[1:])
    assert any(c.isalpha() for c in lines[1].split("  ")[-1])


def test_set_folders_map_to_the_model_outputs_by_name(tmp_path):
    """A set with class folders missing still scores each folder against its own output."""
    from timm.data import ImageNetInfo

    from overlock.cli.validate import folder_classes

    wnids = list(ImageNetInfo().label_names())
    for name in (wnids[0], wnids[999]):
        (tmp_path / "in" / name).mkdir(parents=True)
    classes = folder_classes(str(tmp_path / "in"), None, wnids)
    assert classes.index(wnids[999]) == 999
    for name in ("3", "999"):
        (tmp_path / "v2" / name).mkdir(parents=True)
    assert folder_classes(str(tmp_path / "v2"), None, wnids)[999] == "999"
    subset = subset_indices("imagenet-r")
    r_classes = folder_classes(str(tmp_path / "in"), subset, wnids)
    assert [wnids.index(c) for c in r_classes] == subset  # position i of the 200 <-> output subset[i]
    (tmp_path / "other" / "cat").mkdir(parents=True)
    assert folder_classes(str(tmp_path / "other"), None, wnids) is None  # unknown names: sorted folders
