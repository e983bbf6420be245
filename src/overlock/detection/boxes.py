"""Box machinery of mmdetection 2.x at test time: anchors, the delta coder, NMS as mmcv runs it, RoI levels.

Boxes are (x1, y1, x2, y2) in pixels with mmdet 2.x's continuous convention: width = x2 - x1 (no +1 anywhere).
RoIs are (image index, x1, y1, x2, y2). See docs/detection.md for where this differs from torchvision's detectors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = [
    "AnchorGenerator", "DeltaXYWHCoder", "batched_nms", "boxes_to_rois", "map_roi_levels", "multiclass_nms",
]

# mmcv runs one NMS on class-offset boxes below this many boxes, one NMS per class from it on
NMS_SPLIT_THRESHOLD = 10000
# log-space clamp of the predicted width and height changes: |log(16 / 1000)|
WH_RATIO_CLIP = 16 / 1000


@dataclass(frozen=True)
class AnchorGenerator:
    """mmdet's ``AnchorGenerator``: per level, ``len(ratios) * len(scales)`` anchors centred on each grid point.

    Base anchors are centred on (0, 0) (centre offset 0) with height ``stride * scale * sqrt(ratio)`` and width
    ``stride * scale / sqrt(ratio)`` (ratio = h / w); grid cell (y, x) shifts them by (x * stride, y * stride).
    Anchor order within a level: y slowest, then x, then ratio (scales innermost).
    """

    strides: Sequence[int] = (4, 8, 16, 32, 64)
    ratios: Sequence[float] = (0.5, 1.0, 2.0)
    scales: Sequence[float] = (8.0,)

    @property
    def num_base_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride: int, device: torch.device | None = None) -> Tensor:
        """The (A, 4) anchors of one level around (0, 0), in float32 as mmdet computes them."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32, device=device)
        scales = torch.tensor(self.scales, dtype=torch.float32, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_anchors(self, size: tuple[int, int], stride: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """The (H * W * A, 4) anchors of a level whose feature map is ``size`` = (H, W)."""
        base = self.base_anchors(stride, device).to(dtype)
        shift_x = torch.arange(size[1], device=device).to(dtype) * stride
        shift_y = torch.arange(size[0], device=device).to(dtype) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 4)
        return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)

    def __call__(self, sizes: Sequence[tuple[int, int]], device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Anchors of every level, given each level's feature-map size (finest first)."""
        if len(sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature levels, got {len(sizes)}")
        return [self.grid_anchors(tuple(s), stride, device, dtype) for s, stride in zip(sizes, self.strides)]


@dataclass(frozen=True)
class DeltaXYWHCoder:
    """mmdet's ``DeltaXYWHBBoxCoder``: (dx, dy, dw, dh) normalised by ``means`` and ``stds``, relative to the box
    centre and size; decoded sizes are clamped in log space and boxes clipped to the image (when a shape is given)."""

    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)

    def encode(self, boxes: Tensor, targets: Tensor) -> Tensor:
        """The (N, 4) normalised deltas that turn ``boxes`` into ``targets`` (both (N, 4))."""
        px, py = (boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5
        pw, ph = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        gx, gy = (targets[..., 0] + targets[..., 2]) * 0.5, (targets[..., 1] + targets[..., 3]) * 0.5
        gw, gh = targets[..., 2] - targets[..., 0], targets[..., 3] - targets[..., 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: Sequence[int] | None = None) -> Tensor:
        """Boxes (N, 4) moved by ``deltas`` (N, 4k: k sets of deltas per box) into (N, 4k) boxes.

        ``max_shape``: the (height, width, ...) of the image (its size before padding) to clip to."""
        num_boxes = deltas.shape[0]
        if num_boxes == 0:
            return deltas
        groups = deltas.shape[1] // 4
        deltas = deltas.reshape(-1, 4) * deltas.new_tensor(self.stds).view(1, -1) + deltas.new_tensor(self.means)
        boxes = boxes.repeat(1, groups).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        sizes = boxes[:, 2:] - boxes[:, :2]
        max_ratio = abs(math.log(WH_RATIO_CLIP))
        new_centres = centres + sizes * deltas[:, :2]
        new_sizes = sizes * deltas[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp()
        out = torch.cat([new_centres - new_sizes * 0.5, new_centres + new_sizes * 0.5], dim=-1)
        if max_shape is not None:
            height, width = max_shape[0], max_shape[1]
            out = torch.stack([out[:, 0].clamp(0, width), out[:, 1].clamp(0, height),
                               out[:, 2].clamp(0, width), out[:, 3].clamp(0, height)], dim=-1)
        return out.reshape(num_boxes, -1)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                split_threshold: int = NMS_SPLIT_THRESHOLD) -> tuple[Tensor, Tensor]:
    """NMS within each group as mmcv 1.x's ``batched_nms`` does it: ``(dets (K, 5), keep (K,))``, by score.

    Boxes are shifted by ``group * (largest coordinate + 1)`` so that groups cannot overlap; below
    ``split_threshold`` boxes one NMS runs on all of them, otherwise one per group on the same shifted boxes and the
    union is sorted by score. (torchvision's ``batched_nms`` splits from 1000 boxes on, on unshifted boxes.)
    A box is dropped when its IoU with a kept, higher-scoring box is > ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5), groups.new_zeros(0, dtype=torch.long)
    offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if shifted.shape[0] < split_threshold:
        keep = nms(shifted, scores, iou_threshold)
    else:
        kept = torch.zeros_like(scores, dtype=torch.bool)
        for group in torch.unique(groups):
            members = (groups == group).nonzero().view(-1)
            kept[members[nms(shifted[members], scores[members], iou_threshold)]] = True
        keep = kept.nonzero().view(-1)
        keep = keep[scores[keep].sort(descending=True)[1]]
    return torch.cat([boxes[keep], scores[keep, None]], dim=-1), keep


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float,
                   max_per_img: int) -> tuple[Tensor, Tensor]:
    """mmdet's ``multiclass_nms``: ``(dets (K, 5), labels (K,))`` by score, at most ``max_per_img``.

    ``boxes`` (N, 4 * classes) or class-agnostic (N, 4); ``scores`` (N, classes + 1), background last. Every
    (box, class) pair scoring strictly above ``score_threshold`` is a candidate; NMS runs per class.
    """
    num_classes = scores.shape[1] - 1
    if boxes.shape[1] > 4:
        boxes = boxes.view(scores.shape[0], -1, 4)
    else:
        boxes = boxes[:, None].expand(scores.shape[0], num_classes, 4)
    class_scores = scores[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(class_scores)
    boxes, class_scores, labels = boxes.reshape(-1, 4), class_scores.reshape(-1), labels.reshape(-1)
    candidates = (class_scores > score_threshold).nonzero().squeeze(1)
    boxes, class_scores, labels = boxes[candidates], class_scores[candidates], labels[candidates]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5), labels
    dets, keep = batched_nms(boxes, class_scores, labels, iou_threshold)
    if max_per_img > 0:
        dets, keep = dets[:max_per_img], keep[:max_per_img]
    return dets, labels[keep]


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes (n_i, >= 4) as one (sum n_i, 5) RoI tensor (image index, x1, y1, x2, y2)."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=-1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """The FPN level of each RoI: floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped to [0, num_levels - 1].

    (torchvision's ``LevelMapper`` uses floor(4 + log2(sqrt(area) / 224) + 1e-6) instead, with the epsilon outside.)
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()
