"""Detection training configuration, the official COCO recipes as presets, and what they prescribe: the detector,
the data paths, the optimizer's parameter groups and mmcv's step schedule with linear warm-up.

Recipes (official ``detection/configs/maskrcnn_overlock``; Cascade as Swin's Cascade Mask R-CNN 3x, which the paper
follows): AdamW with weight decay 0.05 (none for parameters whose name contains ``norm``, mmcv's substring rule),
global batch 16, warm-up over 500 iterations from 0.001 of the rate; 1x: 12 epochs, lr 2e-4 divided by 10 after
epochs 8 and 11, the single-scale pipeline; 3x: 36 epochs, lr 1e-4, steps after 27 and 33, multi-scale + crop.
Drop path 0.2 / 0.4 / 0.6 for T / S / B.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import GlobalBatchConfig
from ..engine.optimizer import linear_warmup
from .data import DetectionDataError
from .detectors import DETECTOR_VARIANTS, DetectorConfig, MaskRCNN, TestConfig, create_detector
from .losses import CASCADE_TRAIN, MASK_RCNN_TRAIN, DetectorTrainCfg


@dataclass
class DetTrainConfig(GlobalBatchConfig):
    """Every knob of a detection run; presets fill in recipes, the command line overrides any field."""

    backbone: str = "overlock_t"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # backbone arguments (architecture overrides)
    cascade: bool = False
    widths: dict[str, int] = field(default_factory=dict)  # DetectorConfig widths (fpn_channels, ...): small models
    pretrained: str | None = None  # backbone checkpoint to start from (ImageNet weights)
    weights: str | None = None  # whole detector checkpoint to start from
    data_dir: str | None = None  # COCO 2017 (annotations/instances_train2017.json, train2017/) or shapes layout
    train_ann: str | None = None  # explicit paths instead of the layout's
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    pipeline: str = "1x"  # '1x' (single scale) or '3x' (multi-scale + crop)
    train_scale: list[int] = field(default_factory=lambda: [1333, 800])  # 1x pipeline
    test_scale: list[int] = field(default_factory=lambda: [1333, 800])
    epochs: int = 12
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])
    global_batch: int = 16
    batch_size: int = 2  # per process
    lr: float = 2e-4
    weight_decay: float = 0.05
    no_decay_keys: list[str] = field(default_factory=lambda: ["absolute_pos_embed", "relative_position_bias_table",
                                                              "norm"])
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: float | None = None
    drop_path: float = 0.2
    amp: str = "none"  # 'none', 'bf16' or 'fp16'
    sync_bn: bool = True
    eval_every: int = 1  # evaluate (COCO AP) every N epochs and at the end
    save_every: int = 0  # also checkpoint every N steps
    workers: int = 4
    seed: int = 0
    output: str = "runs/det"
    max_steps: int = 0  # stop after N steps in all, to resume later (0: no limit)

    @property
    def train_cfg(self) -> DetectorTrainCfg:
        return CASCADE_TRAIN if self.cascade else MASK_RCNN_TRAIN


_DROP_PATH = {"t": 0.2, "s": 0.4, "b": 0.6}
_THREE_X = {"pipeline": "3x", "epochs": 36, "lr_steps": [27, 33], "lr": 1e-4}

DET_PRESETS: dict[str, DetTrainConfig] = {}
for _v, _name in DETECTOR_VARIANTS.items():
    DET_PRESETS[f"maskrcnn_overlock_{_v}_1x"] = DetTrainConfig(backbone=_name, drop_path=_DROP_PATH[_v],
                                                               output=f"runs/maskrcnn_{_v}_1x")
    DET_PRESETS[f"maskrcnn_overlock_{_v}_3x"] = DetTrainConfig(backbone=_name, drop_path=_DROP_PATH[_v],
                                                               output=f"runs/maskrcnn_{_v}_3x", **_THREE_X)
    DET_PRESETS[f"cascade_overlock_{_v}_3x"] = DetTrainConfig(backbone=_name, drop_path=_DROP_PATH[_v], cascade=True,
                                                              output=f"runs/cascade_{_v}_3x", **_THREE_X)
# a small Mask R-CNN on the generated shapes (``overlock data shapes DIR``), minutes on a CPU
DET_PRESETS["shapes"] = DetTrainConfig(
    backbone="test_overlock", model_kwargs={"kernel_sizes": [5, 5, 5, 5]},
    widths={"fpn_channels": 32, "rpn_channels": 32, "fc_channels": 64, "conv_channels": 32, "mask_channels": 32},
    train_scale=[64, 64], test_scale=[64, 64], epochs=5, lr_steps=[4], global_batch=4, batch_size=4,
    lr=1e-3, warmup_iters=30, drop_path=0.0, sync_bn=False, workers=0, output="runs/det_shapes",
)


def det_preset(name: str) -> DetTrainConfig:
    if name not in DET_PRESETS:
        raise ValueError(f"unknown detection preset {name!r}; presets: {', '.join(DET_PRESETS)}")
    return dataclasses.replace(DET_PRESETS[name])


def coco_paths(cfg: DetTrainConfig, split: str) -> tuple[Path, Path]:
    """(instances JSON, image folder) of ``split`` ('train' or 'val'): the explicit options, else the layout of
    ``data_dir``: COCO 2017's (``annotations/instances_val2017.json``, ``val2017/``) or the generated shapes'
    (``annotations/instances_val.json``, ``images/val/``)."""
    ann, images = getattr(cfg, f"{split}_ann"), getattr(cfg, f"{split}_images")
    if ann and images:
        return Path(ann), Path(images)
    if not cfg.data_dir:
        raise DetectionDataError(f"no {split} data: give --data-dir, or the instances JSON and the image folder")
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise DetectionDataError(f"data folder not found: {root}")
    layouts = [(root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"),
               (root / "annotations" / f"instances_{split}.json", root / "images" / split)]
    for layout_ann, layout_images in layouts:
        if layout_ann.is_file():
            return Path(ann or layout_ann), Path(images or layout_images)
    raise DetectionDataError(f"no {split} annotations in {root}: expected {layouts[0][0]} or {layouts[1][0]}")


def build_detector(cfg: DetTrainConfig, num_classes: int, test_cfg: TestConfig | None = None) -> MaskRCNN:
    """The detector of ``cfg`` for ``num_classes`` classes: the backbone from ``cfg.pretrained`` (ImageNet weights,
    the detection-only norms and fusion from their initial values) or the whole model from ``cfg.weights``."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    config = DetectorConfig(backbone=cfg.backbone, backbone_args=kwargs, num_classes=num_classes,
                            cascade=cfg.cascade, test_cfg=test_cfg or TestConfig(), **cfg.widths)
    return create_detector(config, weights=cfg.weights, backbone_weights=cfg.pretrained)


def step_lr(cfg: DetTrainConfig, step: int, epoch: int) -> float:
    """The learning rate of iteration ``step`` (0-based, counted over the run) in epoch ``epoch`` (0-based): mmcv's
    ``StepLrUpdaterHook`` by epoch (times 0.1 for each of ``lr_steps`` reached) with ``warmup='linear'`` over the
    first ``warmup_iters`` iterations from ``warmup_ratio``."""
    lr = cfg.lr * 0.1 ** sum(epoch >= s for s in cfg.lr_steps)
    return linear_warmup(lr, step, cfg.warmup_iters, cfg.warmup_ratio)
