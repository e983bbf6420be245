"""The segmentation recipe as the official configs spell it (schedule, parameter groups, presets) and the metrics
as mmsegmentation computes them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from overlock.segmentation.upernet import create_upernet
from overlock.segmentation.config import SEG_PRESETS, SegTrainConfig, param_groups, poly_lr, seg_preset
from overlock.segmentation.metrics import IoUAccumulator


def mmseg_metrics(preds, labels, num_classes, ignore=255):
    """Written from mmsegmentation 0.30's ``intersect_and_union`` / ``eval_metrics``: per-image histograms over the
    classes (``histc`` with num_classes bins over [0, num_classes - 1]) summed, then ratios and nan-means."""
    total = np.zeros((4, num_classes))
    for pred, label in zip(preds, labels):
        keep = label != ignore
        pred, label = pred[keep], label[keep]
        bins = dict(bins=num_classes, range=(0, num_classes - 1))
        inter = np.histogram(pred[pred == label], **bins)[0]
        area_pred, area_label = np.histogram(pred, **bins)[0], np.histogram(label, **bins)[0]
        total += [inter, area_pred + area_label - inter, area_pred, area_label]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = total[0] / total[1], total[0] / total[3]
    return {"aAcc": 100 * total[0].sum() / total[3].sum(), "mIoU": 100 * np.nanmean(iou),
            "mAcc": 100 * np.nanmean(acc), "IoU": 100 * iou, "Acc": 100 * acc}


def test_iou_metrics_match_mmsegmentation():
    rng = np.random.default_rng(0)
    num_classes = 6
    labels = [rng.integers(0, 5, (17, 23)) for _ in range(3)]  # class 5 never labelled
    for label in labels:
        label[rng.random(label.shape) < 0.2] = 255
    preds = [np.where(rng.random(l.shape) < 0.7, np.where((l == 255) | (l == 4), 0, l), rng.integers(0, 4, l.shape))
             for l in labels]  # classes 4 and 5 never predicted: 5 has no IoU at all, 4 an IoU of 0
    accumulator = IoUAccumulator(num_classes)
    for pred, label in zip(preds, labels):
        accumulator.update(torch.from_numpy(pred), torch.from_numpy(label))
    ours = accumulator.compute()
    expected = mmseg_metrics(preds, labels, num_classes)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ours[key] == pytest.approx(expected[key], rel=1e-12)
    per_class = list(ours["per_class"].values())
    assert math.isnan(per_class[5]["IoU"]) and math.isnan(per_class[5]["Acc"]) and per_class[4]["IoU"] == 0
    np.testing.assert_allclose([c["IoU"] for c in per_class], expected["IoU"])
    np.testing.assert_allclose([c["Acc"] for c in per_class], expected["Acc"])


def test_metrics_of_a_set_without_labelled_pixels_are_not_defined():
    """Every pixel ignored: no pixel to be right or wrong, so aAcc is 0/0 (mmsegmentation's formula gives NaN too),
    and no class is labelled, so every IoU, accuracy and mean is NaN, not 0."""
    accumulator = IoUAccumulator(3)
    accumulator.update(torch.tensor([[0, 1], [2, 2]]), torch.full((2, 2), 255))
    ours = accumulator.compute()
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):  # numpy's nanmean of NaNs only
        expected = mmseg_metrics([np.array([[0, 1], [2, 2]])], [np.full((2, 2), 255)], 3)
    assert math.isnan(expected["aAcc"]) and math.isnan(ours["aAcc"])
    assert math.isnan(ours["mIoU"]) and math.isnan(ours["mAcc"])
    assert all(math.isnan(v) for c in ours["per_class"].values() for v in c.values())
    accumulator.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))  # one labelled pixel right of two
    assert accumulator.compute()["aAcc"] == 50


def test_validate_prints_undefined_metrics_as_n_a(tmp_path, capsys):
    """``overlock seg validate`` on a set whose every pixel is ignored: aAcc, mIoU and mAcc read 'n/a'."""
    from PIL import Image

    from overlock.cli.main import main

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "images" / split / "a.png")
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "masks" / split / "a.png")
    (tmp_path / "classes.txt").write_text("sky\ntree\n")
    model = create_upernet("test_overlock", num_classes=2, channels=16, aux_channels=None)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    assert main(["seg", "validate", "--weights", str(tmp_path / "model.pth"), "--backbone", "test_overlock",
                 "--data-dir", str(tmp_path), "--dataset", "folder", "--scale", "32", "32", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "aAcc n/a  mIoU n/a  mAcc n/a  (1 images, 0 skipped" in printed
    assert [line.split() for line in printed.splitlines()[1:3]] == [["sky", "n/a", "n/a"], ["tree", "n/a", "n/a"]]


def test_poly_schedule_with_linear_warmup():
    cfg = seg_preset("upernet_overlock_t")
    assert poly_lr(cfg, 0) == pytest.approx(6e-5 * 1e-6)
    assert poly_lr(cfg, 750) == pytest.approx(6e-5 * (1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6)))
    assert poly_lr(cfg, 1500) == pytest.approx(6e-5 * (1 - 1500 / 160000))
    assert poly_lr(cfg, 80000) == pytest.approx(3e-5)
    assert poly_lr(cfg, 159999) == pytest.approx(6e-5 / 160000)


@pytest.mark.parametrize("variant, drop_path", [("t", 0.2), ("s", 0.3), ("b", 0.5)])
def test_presets_are_the_official_configs(variant, drop_path):
    cfg = SEG_PRESETS[f"upernet_overlock_{variant}"]
    assert cfg.backbone == f"overlock_{variant}" and cfg.drop_path == drop_path
    assert (cfg.lr, cfg.weight_decay, cfg.iters, cfg.global_batch, cfg.crop_size) == (6e-5, 0.01, 160000, 16, 512)
    assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.power, cfg.min_lr) == (1500, 1e-6, 1.0, 0.0)
    assert (cfg.aux_weight, cfg.channels, cfg.aux_channels, cfg.sync_bn) == (0.4, 512, 256, True)
    assert cfg.train_scale == [2048, 512] and cfg.ratio_range == [0.5, 2.0] and cfg.cat_max_ratio == 0.75
    assert cfg.eval_every == 8000 and cfg.clip_grad is None and cfg.amp == "none"


def test_weight_decay_off_only_for_names_containing_norm():
    with torch.device("meta"):
        model = create_upernet("overlock_t")
    groups = param_groups(model, SegTrainConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert no_decay == {n for n in names.values() if "norm" in n}
    assert "backbone.extra_norm.3.weight" in no_decay and "backbone.sub_blocks3.0.norm1.bias" in no_decay
    decayed = {names[id(p)] for p in groups[0]["params"]}
    for name in ("backbone.blocks1.0.proj.0.weight",  # the RepConv blocks' LayerNorm keeps its decay
                 "backbone.blocks1.0.proj.1.origin_bn.weight", "decode_head.bottleneck.bn.weight",
                 "backbone.sub_blocks3.0.rpb2", "decode_head.conv_seg.bias", "backbone.patch_embed1.1.weight"):
        assert name in decayed, name
    assert len(decayed) + len(no_decay) == len(names)


def test_accumulation_reaches_the_global_batch():
    cfg = SegTrainConfig(global_batch=16, batch_size=2)
    assert [cfg.accum_steps(n) for n in (1, 2, 8)] == [8, 4, 1]
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.accum_steps(3)
