"""mmdetection's RPN head and its test-time proposal selection."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import DeltaXYWHCoder, batched_nms

__all__ = ["RPNHead", "RPNTestConfig", "rpn_test_config", "select_proposals"]


@dataclass(frozen=True)
class RPNTestConfig:
    """mmdet's ``test_cfg.rpn``: boxes kept per level before NMS, proposals kept per image, NMS IoU, and the size a
    proposal's width and height must exceed."""

    nms_pre: int = 1000
    max_per_img: int = 1000
    iou_threshold: float = 0.7
    min_bbox_size: float = 0.0


class RPNHead(nn.Module):
    """A 3x3 conv with ReLU shared by all levels, then 1x1 convs for the sigmoid objectness of each anchor
    (``rpn_cls``) and its four deltas (``rpn_reg``; channel 4a + k is delta k of anchor a)."""

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, num_anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        cls_scores, bbox_preds = [], []
        for x in features:
            x = F.relu(self.rpn_conv(x))
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds


def select_proposals(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    anchors: Sequence[Tensor],
    img_shape: Sequence[int],
    cfg: RPNTestConfig,
    coder: DeltaXYWHCoder | None = None,
) -> Tensor:
    """The proposals (n, 5) = (x1, y1, x2, y2, score) of one image, as mmdet's ``RPNHead`` selects them.

    Per level (inputs without the batch dimension: (A, H, W), (4A, H, W), (H*W*A, 4)): flatten in (y, x, anchor)
    order; past ``nms_pre`` boxes keep the best-scoring ``nms_pre``. Then decode all levels with ``coder`` (the
    RPN's: stds 1 by default; clipped to ``img_shape``), drop boxes not wider and taller than ``min_bbox_size``, NMS
    with the level as the group (boxes of different levels never suppress each other), and keep the first
    ``max_per_img`` by score.
    """
    scores, deltas, kept_anchors, levels = [], [], [], []
    for level, (cls_score, bbox_pred, level_anchors) in enumerate(zip(cls_scores, bbox_preds, anchors)):
        level_scores = cls_score.permute(1, 2, 0).reshape(-1).sigmoid()
        level_deltas = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
        if 0 < cfg.nms_pre < level_scores.shape[0]:
            ranked, order = level_scores.sort(descending=True)
            top = order[:cfg.nms_pre]
            level_scores, level_deltas, level_anchors = ranked[:cfg.nms_pre], level_deltas[top], level_anchors[top]
        scores.append(level_scores)
        deltas.append(level_deltas)
        kept_anchors.append(level_anchors)
        levels.append(torch.full_like(level_scores, level, dtype=torch.long))
    score = torch.cat(scores)
    boxes = (coder or DeltaXYWHCoder()).decode(torch.cat(kept_anchors), torch.cat(deltas), max_shape=img_shape)
    level_ids = torch.cat(levels)
    if cfg.min_bbox_size >= 0:
        valid = ((boxes[:, 2] - boxes[:, 0]) > cfg.min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) > cfg.min_bbox_size)
        if not bool(valid.all()):
            boxes, score, level_ids = boxes[valid], score[valid], level_ids[valid]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5)
    dets, _ = batched_nms(boxes, score, level_ids, cfg.iou_threshold)
    return dets[:cfg.max_per_img]


def rpn_test_config(test_cfg: dict[str, Any]) -> RPNTestConfig:
    """An mmdet ``test_cfg.rpn`` dict as an ``RPNTestConfig``."""
    return RPNTestConfig(nms_pre=test_cfg.get("nms_pre", -1), max_per_img=test_cfg["max_per_img"],
                         iou_threshold=test_cfg["nms"]["iou_threshold"],
                         min_bbox_size=test_cfg.get("min_bbox_size", 0))
