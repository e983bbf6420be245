"""Mask R-CNN and Cascade Mask R-CNN on OverLoCK, as the official COCO models (mmdetection 2.28) compute them.

Module and parameter names are mmdet's (``backbone``, ``neck``, ``rpn_head``, ``roi_head``), so that the official
``maskrcnn{1x,3x}_overlock_*`` checkpoints load strictly. The pieces a trainer needs are separate methods:
``extract_feat``, ``rpn_head``, ``anchors``, ``proposals``, ``roi_head.bbox_forward`` / ``mask_forward``.
``simple_test`` is mmdet's test path with its output format; ``detect`` gives the same detections flat.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ..models.overlock import (
    CheckpointMismatchError, OverLoCK, checkpoint_filter_fn, dense_state_dict, mismatch_report, official_backbone,
)
from ..weights_file import read_checkpoint
from .boxes import AnchorGenerator, DeltaXYWHCoder
from .necks import FPN
from .roi_heads import (
    BOX_STDS,
    CASCADE_STDS,
    CascadeRoIHead,
    ConvFCBBoxHead,
    FCNMaskHead,
    RCNNTestConfig,
    RoIHead,
    StandardRoIHead,
    group_by_class,
    rcnn_test_config,
)
from .rpn import RPNHead, RPNTestConfig, rpn_test_config, select_proposals

__all__ = [
    "DETECTOR_VARIANTS", "CascadeMaskRCNN", "DetectorConfig", "MaskRCNN", "TestConfig", "create_cascade_maskrcnn",
    "create_detector", "create_maskrcnn", "detector_from_mmdet_config", "load_detector_weights",
    "load_official_detector", "recognise_detector",
]

ImgMeta = dict[str, Any]

# the paper's detection backbones: variant -> timm model
DETECTOR_VARIANTS: dict[str, str] = {"t": "overlock_t", "s": "overlock_s", "b": "overlock_b"}


@dataclass(frozen=True)
class TestConfig:
    """mmdet's ``test_cfg``: RPN proposal selection and box/mask post-processing (official COCO values)."""

    rpn: RPNTestConfig = field(default_factory=RPNTestConfig)
    rcnn: RCNNTestConfig = field(default_factory=RCNNTestConfig)

    @classmethod
    def from_mmdet(cls, test_cfg: dict[str, Any]) -> TestConfig:
        """From an mmdet ``test_cfg`` dict (``rpn`` and ``rcnn`` entries)."""
        return cls(rpn_test_config(test_cfg["rpn"]), rcnn_test_config(test_cfg["rcnn"]))


@dataclass(frozen=True)
class DetectorConfig:
    """The architecture of a (Cascade) Mask R-CNN: the official configs' values by default.

    ``backbone``: a timm model name; ``backbone_args``: its constructor arguments (architecture overrides,
    ``drop_path_rate``). Cascade stages use Swin's box head (4 conv-BN-ReLU, 1 fc, class-agnostic deltas)."""

    backbone: str = "overlock_t"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 80
    cascade: bool = False
    fpn_channels: int = 256
    rpn_channels: int = 256
    fc_channels: int = 1024
    conv_channels: int = 256
    mask_channels: int = 256
    test_cfg: TestConfig = field(default_factory=TestConfig)


class MaskRCNN(nn.Module):
    """mmdet's ``MaskRCNN`` (a ``TwoStageDetector``): OverLoCK detection backbone, FPN, RPN head, RoI head.

    Inputs everywhere are a padded, normalised batch ``images`` (B, 3, H, W) and one mmdet-style ``img_meta`` dict
    per image: ``img_shape`` (h, w, 3) of the resized image before padding, ``ori_shape`` (h, w, 3) of the original,
    ``scale_factor`` (w, h, w, h) = resized / original, ``pad_shape``, ``flip``.
    """

    def __init__(self, backbone: OverLoCK, neck: FPN, rpn_head: RPNHead, roi_head: RoIHead,
                 test_cfg: TestConfig | None = None, anchor_generator: AnchorGenerator | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.test_cfg = test_cfg or TestConfig()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.rpn_coder = DeltaXYWHCoder()
        self.num_classes = roi_head.num_classes

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """The FPN levels (strides 4-64, 5 maps) of a batch."""
        return self.neck(self.backbone(images))

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Per level the (H * W * A, 4) anchors in input pixels, for the levels' feature maps."""
        return self.anchor_generator([f.shape[-2:] for f in features], features[0].device, features[0].dtype)

    def proposals(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], anchors: Sequence[Tensor],
                  img_metas: Sequence[ImgMeta], cfg: RPNTestConfig | None = None) -> list[Tensor]:
        """Per image the RPN proposals (n, 5) = (x1, y1, x2, y2, score) in input pixels (``cfg``: the test
        configuration by default; training passes its own ``rpn_proposal`` settings)."""
        cfg = cfg or self.test_cfg.rpn
        return [
            select_proposals([c[i] for c in cls_scores], [b[i] for b in bbox_preds], anchors,
                             meta["img_shape"], cfg, self.rpn_coder)
            for i, meta in enumerate(img_metas)
        ]

    def detect(self, images: Tensor, img_metas: Sequence[ImgMeta], rescale: bool = True) -> list[dict[str, Tensor]]:
        """Per image, by score: ``boxes`` (k, 4), ``scores`` (k,), ``labels`` (k,) and ``masks`` (k, H, W) bool, in
        original-image pixels with ``rescale`` (else in input pixels, masks at ``img_shape``)."""
        check_img_metas(images, img_metas)
        features = self.extract_feat(images)
        cls_scores, bbox_preds = self.rpn_head(features)
        proposals = self.proposals(cls_scores, bbox_preds, self.anchors(features), img_metas)
        return self.roi_head.simple_test(features, proposals, img_metas, self.test_cfg.rcnn, rescale)

    def simple_test(self, images: Tensor, img_metas: Sequence[ImgMeta], rescale: bool = True
                    ) -> list[dict[str, list[Tensor]]]:
        """mmdet's ``simple_test`` output: per image ``{"boxes": per class (n_c, 5) with the score,
        "masks": per class (n_c, H, W) bool}``, detection order within a class."""
        return [group_by_class(r["boxes"], r["scores"], r["labels"], r["masks"], self.num_classes)
                for r in self.detect(images, img_metas, rescale)]

    def forward(self, images: Tensor, img_metas: Sequence[ImgMeta], rescale: bool = True) -> list[dict[str, Tensor]]:
        """The detections of ``detect``."""
        return self.detect(images, img_metas, rescale)

    def forward_dummy(self, images: Tensor, num_rois: int = 1000, num_mask_rois: int = 100) -> list[Tensor]:
        """mmdet's ``forward_dummy`` (what its FLOPs tool runs): backbone, FPN, RPN head, then every box head on
        ``num_rois`` RoIs and every mask head on the first ``num_mask_rois`` of them (fixed boxes here, mmdet's are
        random)."""
        features = self.extract_feat(images)
        cls_scores, bbox_preds = self.rpn_head(features)
        size = torch.tensor(images.shape[-2:][::-1], dtype=images.dtype, device=images.device).repeat(2)
        fractions = torch.linspace(0.1, 0.9, num_rois, dtype=images.dtype, device=images.device)[:, None]
        boxes = torch.cat([fractions * 0.5, fractions * 0.5, fractions, fractions], dim=1) * size
        rois = torch.cat([boxes.new_zeros(num_rois, 1), boxes], dim=1)
        return [*cls_scores, *bbox_preds, *self.roi_head.forward_dummy(features, rois, num_mask_rois)]


class CascadeMaskRCNN(MaskRCNN):
    """mmdet's ``CascadeRCNN`` with masks: as ``MaskRCNN``, with a ``CascadeRoIHead`` (``roi_head.bbox_forward``
    and ``mask_forward`` take the stage)."""


def check_img_metas(images: Tensor, img_metas: Sequence[ImgMeta]) -> None:
    """One-line errors for metadata that does not fit the batch."""
    if images.dim() != 4:
        raise ValueError(f"expected a 4-D (B, 3, H, W) image batch, got shape {list(images.shape)}")
    if len(img_metas) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(img_metas)} img_metas")
    for i, meta in enumerate(img_metas):
        missing = [k for k in ("img_shape", "ori_shape", "scale_factor") if k not in meta]
        if missing:
            raise ValueError(f"img_metas[{i}] lacks {', '.join(missing)}")
        if len(meta["scale_factor"]) != 4:
            raise ValueError(f"img_metas[{i}]['scale_factor'] must be (w, h, w, h), got {meta['scale_factor']}")


def create_detector(config: DetectorConfig, weights: str | Path | None = None,
                    backbone_weights: str | Path | None = None) -> MaskRCNN:
    """The (Cascade) Mask R-CNN a ``DetectorConfig`` describes.

    ``backbone_weights``: a checkpoint file for the backbone (ImageNet weights: the extra norms and the fusion keep
    their initial values, as in the official training); ``weights``: a whole detector checkpoint, loaded strictly.
    Files are read weights-only."""
    model = _build(config)
    if backbone_weights:
        model.backbone.load_state_dict(checkpoint_filter_fn(read_checkpoint(backbone_weights), model.backbone))
    if weights:
        load_detector_weights(model, read_checkpoint(weights), weights)
    return model


def _build(config: DetectorConfig) -> MaskRCNN:
    backbone = timm.create_model(config.backbone, dense_form="detection", **config.backbone_args)
    in_channels = [info["num_chs"] for info in backbone.feature_info]
    neck = FPN(in_channels, config.fpn_channels, num_outs=5)
    rpn_head = RPNHead(config.fpn_channels, config.rpn_channels)
    mask_head_args = dict(in_channels=config.fpn_channels, num_classes=config.num_classes,
                          conv_channels=config.mask_channels)
    if config.cascade:
        roi_head: RoIHead = CascadeRoIHead(
            [ConvFCBBoxHead(config.fpn_channels, config.num_classes, num_convs=4, conv_channels=config.conv_channels,
                            num_fcs=1, fc_channels=config.fc_channels, class_agnostic=True, stds=stds)
             for stds in CASCADE_STDS],
            [FCNMaskHead(**mask_head_args) for _ in CASCADE_STDS],
        )
        return CascadeMaskRCNN(backbone, neck, rpn_head, roi_head, config.test_cfg)
    bbox_head = ConvFCBBoxHead(config.fpn_channels, config.num_classes, num_fcs=2, fc_channels=config.fc_channels,
                               stds=BOX_STDS)
    roi_head = StandardRoIHead(bbox_head, FCNMaskHead(**mask_head_args))
    return MaskRCNN(backbone, neck, rpn_head, roi_head, config.test_cfg)


def _variant_config(variant: str, num_classes: int, cascade: bool, test_cfg: TestConfig | None,
                    backbone_args: dict[str, Any]) -> DetectorConfig:
    if variant not in DETECTOR_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(DETECTOR_VARIANTS)}")
    return DetectorConfig(backbone=DETECTOR_VARIANTS[variant], backbone_args=backbone_args, num_classes=num_classes,
                          cascade=cascade, test_cfg=test_cfg or TestConfig())


def create_maskrcnn(variant: str = "t", num_classes: int = 80, test_cfg: TestConfig | None = None,
                    weights: str | Path | None = None, backbone_weights: str | Path | None = None,
                    **backbone_args: Any) -> MaskRCNN:
    """The paper's Mask R-CNN on OverLoCK-T/S/B (``variant`` 't', 's', 'b'): 53.34 / 76.68 / 116.38 M parameters
    with 80 classes. ``backbone_args`` go to the backbone (``drop_path_rate``); weights as ``create_detector``."""
    config = _variant_config(variant, num_classes, False, test_cfg, backbone_args)
    return create_detector(config, weights, backbone_weights)


def create_cascade_maskrcnn(variant: str = "t", num_classes: int = 80, test_cfg: TestConfig | None = None,
                            weights: str | Path | None = None, backbone_weights: str | Path | None = None,
                            **backbone_args: Any) -> CascadeMaskRCNN:
    """The paper's Cascade Mask R-CNN on OverLoCK-T/S/B with Swin's box heads: 90.21 / 113.54 / 153.24 M
    parameters with 80 classes (no official checkpoint exists). Arguments as ``create_maskrcnn``."""
    config = _variant_config(variant, num_classes, True, test_cfg, backbone_args)
    return create_detector(config, weights, backbone_weights)  # type: ignore[return-value]


def detector_from_mmdet_config(config: dict[str, Any]) -> MaskRCNN:
    """The detector an mmdet ``model`` config of the official code describes (``MaskRCNN`` or ``CascadeRCNN``
    over an ``OverLoCK`` backbone given by its arguments or a registered name), with its ``test_cfg``."""
    kind = config.get("type")
    if kind not in ("MaskRCNN", "CascadeRCNN"):
        raise ValueError(f"unsupported detector type {kind!r}: expected MaskRCNN or CascadeRCNN")
    name, backbone_args = official_backbone(config["backbone"])
    roi = config["roi_head"]
    bbox_head = roi["bbox_head"][0] if isinstance(roi["bbox_head"], list) else roi["bbox_head"]
    detector = DetectorConfig(
        backbone=name,
        backbone_args=backbone_args,
        num_classes=bbox_head["num_classes"],
        cascade=kind == "CascadeRCNN",
        fpn_channels=config["neck"]["out_channels"],
        rpn_channels=config["rpn_head"]["feat_channels"],
        fc_channels=bbox_head["fc_out_channels"],
        conv_channels=bbox_head.get("conv_out_channels", 256),
        mask_channels=roi["mask_head"]["conv_out_channels"],
        test_cfg=TestConfig.from_mmdet(config["test_cfg"]),
    )
    model = create_detector(detector)
    if list(model.neck.in_channels) != list(config["neck"]["in_channels"]):
        raise ValueError(f"the backbone gives {list(model.neck.in_channels)} channels but the FPN expects "
                         f"{list(config['neck']['in_channels'])}")
    return model


# FPN input widths (lateral convs) -> variant
_VARIANT_BY_WIDTHS = {(64, 128, 384, 640): "t", (64, 128, 448, 640): "s", (80, 160, 528, 720): "b"}


def recognise_detector(state_dict: dict[str, Tensor]) -> tuple[str, bool, int]:
    """``(variant, cascade, num_classes)`` of an official-layout detector state dict, from its FPN input widths
    and its RoI head; a one-line ``CheckpointMismatchError`` when it is none of the paper's detectors."""
    try:
        widths = tuple(int(state_dict[f"neck.lateral_convs.{i}.conv.weight"].shape[1]) for i in range(4))
    except KeyError:
        raise CheckpointMismatchError("not a Mask R-CNN checkpoint: it has no FPN (neck.lateral_convs.*)") from None
    if widths not in _VARIANT_BY_WIDTHS:
        raise CheckpointMismatchError(f"backbone widths {list(widths)} are none of OverLoCK-T/S/B's "
                                      f"({', '.join(str(list(w)) for w in _VARIANT_BY_WIDTHS)})")
    cascade = "roi_head.bbox_head.0.fc_cls.weight" in state_dict
    cls_key = "roi_head.bbox_head.0.fc_cls.weight" if cascade else "roi_head.bbox_head.fc_cls.weight"
    if cls_key not in state_dict:
        raise CheckpointMismatchError("not a Mask R-CNN checkpoint: it has no box head (roi_head.bbox_head.*)")
    return _VARIANT_BY_WIDTHS[widths], cascade, int(state_dict[cls_key].shape[0]) - 1


def load_official_detector(checkpoint: str | Path | dict[str, Any], test_cfg: TestConfig | None = None
                           ) -> MaskRCNN:
    """An official (or our own) Mask R-CNN / Cascade Mask R-CNN checkpoint, file or loaded dict, as a model: the
    variant, the cascade and the number of classes are read from the weights, which are then loaded strictly.
    Files are read weights-only."""
    source: str | Path = "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        source, checkpoint = checkpoint, read_checkpoint(checkpoint)
    state_dict = dense_state_dict(checkpoint)
    variant, cascade, num_classes = recognise_detector(state_dict)
    make = create_cascade_maskrcnn if cascade else create_maskrcnn
    model = make(variant, num_classes, test_cfg)
    return load_detector_weights(model, state_dict, source)


def load_detector_weights(model: MaskRCNN, checkpoint: Any, source: str | Path = "checkpoint") -> MaskRCNN:
    """Load a detector checkpoint (any wrapper, see ``overlock.models.overlock.dense_state_dict``) into ``model``,
    strictly, with a ``CheckpointMismatchError`` listing missing, unexpected and mis-shaped keys."""
    state_dict = dense_state_dict(checkpoint)
    target = model.state_dict()
    missing = set(target) - set(state_dict)
    unexpected = set(state_dict) - set(target)
    mis_shaped = {f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state_dict.items() if k in target and v.shape != target[k].shape}
    if missing or unexpected or mis_shaped:
        lines = mismatch_report(f"{source} does not fit the {type(model).__name__} model", missing, unexpected,
                                mis_shaped)
        if any(k.startswith("roi_head.bbox_head.0.") for k in unexpected):
            lines.append("hint: this is a Cascade Mask R-CNN checkpoint")
        elif any(k.startswith("roi_head.bbox_head.0.") for k in missing):
            lines.append("hint: this is a Mask R-CNN checkpoint, not a Cascade one")
        raise CheckpointMismatchError("\n  ".join(lines))
    model.load_state_dict(state_dict)
    return model

