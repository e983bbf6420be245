"""Segmentation training configuration, the official ADE20K recipe as presets, and what it prescribes: the model,
the optimizer's parameter groups and the learning-rate schedule."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.config import GlobalBatchConfig
from ..engine.optimizer import linear_warmup, substring_decay_groups
from ..models import resolve_model_name
from .upernet import UperNet, create_upernet


@dataclass
class SegTrainConfig(GlobalBatchConfig):
    """Every knob of a segmentation run; presets fill in recipes, the command line overrides any field."""

    backbone: str = "overlock_t"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # backbone arguments (output_stride, kernel_sizes...)
    pretrained: str | None = None  # backbone checkpoint to start from (ImageNet weights)
    weights: str | None = None  # whole UperNet checkpoint to start from (official ADE20K weights, or ours)
    channels: int = 512  # decode head width
    aux_channels: int = 256  # auxiliary head width (0: no auxiliary head)
    dataset: str = "ade20k"  # layout: 'ade20k' or 'folder' (see overlock.segmentation.data)
    data_dir: str | None = None
    reduce_zero_label: bool | None = None  # default: True for ADE20K, False for folders
    crop_size: int = 512
    train_scale: list[int] = field(default_factory=lambda: [2048, 512])  # fit into (long, short) x ratio
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    photometric: bool = True
    test_scale: list[int] = field(default_factory=lambda: [2048, 512])
    test_mode: str = "whole"  # 'whole' or 'slide' (crop_size windows, stride 2/3 of it)
    iters: int = 160_000
    global_batch: int = 16  # images per optimizer step over all processes (batch_size x processes x accumulation)
    batch_size: int = 2  # per process
    lr: float = 6e-5
    weight_decay: float = 0.01
    no_decay_keys: list[str] = field(default_factory=lambda: ["absolute_pos_embed", "relative_position_bias_table",
                                                              "norm"])
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    clip_grad: float | None = None
    drop_path: float = 0.2
    aux_weight: float = 0.4
    amp: str = "none"  # 'none', 'bf16' or 'fp16'
    sync_bn: bool = True  # BatchNorm statistics over all GPUs of a distributed run
    eval_every: int = 8000  # evaluate (mIoU) and checkpoint every N iterations
    save_every: int = 0  # also checkpoint every N iterations (0: at evaluations only)
    workers: int = 4
    seed: int = 0
    output: str = "runs/seg"
    max_steps: int = 0  # stop after N iterations in all, to resume later (0: no limit)



_ADE20K = dict(dataset="ade20k", output="runs/ade20k")

SEG_PRESETS: dict[str, SegTrainConfig] = {
    # the official ADE20K recipe (segmentation/configs/overlock of the official code); drop path per variant
    "upernet_overlock_t": SegTrainConfig(backbone="overlock_t", drop_path=0.2, **_ADE20K),
    "upernet_overlock_s": SegTrainConfig(backbone="overlock_s", drop_path=0.3, **_ADE20K),
    "upernet_overlock_b": SegTrainConfig(backbone="overlock_b", drop_path=0.5, **_ADE20K),
    # the paper's ablation schedule on ADE20K: 80k iterations at batch 32, the official recipe otherwise; the
    # rows are XT-sized, so XT's drop path
    "ablation": SegTrainConfig(backbone="overlock_xt", drop_path=0.1, iters=80_000, global_batch=32,
                               **dict(_ADE20K, output="runs/ade20k_ablation")),
    # a small UperNet on the generated shapes (``overlock data shapes DIR``), minutes on a CPU
    "shapes": SegTrainConfig(
        backbone="test_overlock", model_kwargs=dict(kernel_sizes=[5, 5, 5, 5]), channels=64, aux_channels=32,
        dataset="folder", crop_size=64, train_scale=[64, 64], ratio_range=[0.75, 1.5], test_scale=[64, 64],
        iters=300, global_batch=8, batch_size=8, lr=1e-3, warmup_iters=30, drop_path=0.0, sync_bn=False,
        eval_every=100, workers=0, output="runs/shapes",
    ),
}


def seg_preset(name: str) -> SegTrainConfig:
    if name not in SEG_PRESETS:
        raise ValueError(f"unknown segmentation preset {name!r}; presets: {', '.join(SEG_PRESETS)}")
    return dataclasses.replace(SEG_PRESETS[name])


def build_segmenter(cfg: SegTrainConfig, num_classes: int) -> UperNet:
    """The UperNet of ``cfg``: the backbone from ``cfg.pretrained`` (non-strict on the extra norms, as the official
    training loads ImageNet weights), or the whole model from ``cfg.weights``."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    return create_upernet(resolve_model_name(cfg.backbone), num_classes=num_classes, channels=cfg.channels,
                          aux_channels=cfg.aux_channels or None, backbone_weights=cfg.pretrained,
                          weights=cfg.weights, **kwargs)


def param_groups(model: nn.Module, cfg: SegTrainConfig) -> list[dict[str, Any]]:
    """AdamW groups of the official ``paramwise_cfg`` (``engine.optimizer.substring_decay_groups``)."""
    return substring_decay_groups(model, cfg.weight_decay, cfg.no_decay_keys)


def build_optimizer(model: nn.Module, cfg: SegTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))


def poly_lr(cfg: SegTrainConfig, step: int) -> float:
    """The learning rate of iteration ``step`` (0-based): poly decay over ``cfg.iters`` with power ``cfg.power``
    down to ``cfg.min_lr``, times a linear warm-up from ``cfg.warmup_ratio`` over the first ``cfg.warmup_iters``
    (mmcv's ``PolyLrUpdaterHook`` with ``warmup='linear'``)."""
    lr = (cfg.lr - cfg.min_lr) * (1 - step / cfg.iters) ** cfg.power + cfg.min_lr
    return linear_warmup(lr, step, cfg.warmup_iters, cfg.warmup_ratio)
