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
