"""Training targets as mmdetection 2.28 makes them: IoU assignment, random sampling, box deltas, mask targets.

- ``assign_max_iou`` is ``MaxIoUAssigner``: each box takes the gt it overlaps most; IoU >= ``pos_iou`` makes it
  positive, 0 <= IoU < ``neg_iou`` negative, anything between is ignored; with ``match_low_quality`` every gt
  whose best IoU reaches ``min_pos_iou`` also claims every box at that best IoU (ties included).
- ``sample_random`` is ``RandomSampler``: at most ``num * pos_fraction`` positives drawn at random, negatives
  fill the rest of ``num``.
- ``mask_targets`` is ``mask_target``: each positive box (clipped to the mask) cut out of its gt mask with
  RoIAlign (scale 1, adaptive sampling, aligned) at 28 x 28, then >= 0.5.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou, roi_align

IGNORED, NEGATIVE = -1, 0


def assign_max_iou(boxes: Tensor, gt_boxes: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float,
                   match_low_quality: bool) -> Tensor:
    """(N,) int64: k + 1 for a box assigned to gt k, 0 for a negative, -1 for an ignored box."""
    assigned = boxes.new_full((len(boxes),), IGNORED, dtype=torch.long)
    if len(gt_boxes) == 0:
        return assigned.fill_(NEGATIVE)
    if len(boxes) == 0:
        return assigned
    overlaps = box_iou(gt_boxes, boxes)  # (G, N)
    best_iou, best_gt = overlaps.max(dim=0)
    assigned[(best_iou >= 0) & (best_iou < neg_iou)] = NEGATIVE
    positive = best_iou >= pos_iou
    assigned[positive] = best_gt[positive] + 1
    if match_low_quality:
        gt_best_iou = overlaps.max(dim=1).values
        for k in range(len(gt_boxes)):  # in gt order, so a later gt wins a box two gts share
            if gt_best_iou[k] >= min_pos_iou:
                assigned[overlaps[k] == gt_best_iou[k]] = k + 1
    return assigned


@dataclass
class Sampled:
    """The boxes a head trains on: positives first, then negatives."""

    pos_index: Tensor  # into the (gt-extended) candidate boxes
    neg_index: Tensor
    pos_gt: Tensor  # the gt index of each positive
    pos_is_gt: Tensor  # bool: the positive is a gt box added as a proposal
    boxes: Tensor  # (P + Q, 4) candidate boxes, positives then negatives


def _random_subset(index: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    if len(index) <= count:
        return index
    return index[torch.randperm(len(index), generator=generator)[:count].to(index.device)]


def sample_random(boxes: Tensor, assigned: Tensor, gt_boxes: Tensor, num: int, pos_fraction: float,
                  add_gt_as_proposals: bool, generator: torch.Generator | None = None) -> Sampled:
    """``RandomSampler``: with ``add_gt_as_proposals`` the gt boxes are put before ``boxes`` as positives of
    themselves; then at most ``int(num * pos_fraction)`` positives and ``num`` minus their count negatives,
    each drawn at random (``torch.randperm``) when there are more."""
    is_gt = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if add_gt_as_proposals and len(gt_boxes):
        boxes = torch.cat([gt_boxes, boxes])
        assigned = torch.cat([torch.arange(1, len(gt_boxes) + 1, device=boxes.device), assigned])
        is_gt = torch.cat([torch.ones(len(gt_boxes), dtype=torch.bool, device=boxes.device), is_gt])
    pos = _random_subset(torch.nonzero(assigned > 0).flatten(), int(num * pos_fraction), generator).unique()
    neg = _random_subset(torch.nonzero(assigned == 0).flatten(), num - len(pos), generator).unique()
    return Sampled(pos, neg, assigned[pos] - 1, is_gt[pos], torch.cat([boxes[pos], boxes[neg]]))


def mask_targets(pos_boxes: Tensor, pos_gt: Tensor, gt_masks: Tensor, size: int = 28) -> Tensor:
    """(P, size, size) float 0/1: gt mask ``pos_gt[i]`` ((G, H, W) ``gt_masks``) inside box ``pos_boxes[i]``
    (clipped to the mask), sampled with RoIAlign (scale 1, adaptive sampling, aligned) and thresholded at 0.5."""
    if len(pos_boxes) == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    height, width = gt_masks.shape[-2:]
    boxes = pos_boxes.detach().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    rois = torch.cat([pos_gt[:, None].to(boxes), boxes], dim=1)
    sampled = roi_align(gt_masks[:, None].float(), rois, (size, size), 1.0, 0, aligned=True)
    return (sampled[:, 0] >= 0.5).float()


def anchor_valid_flags(level_sizes: Sequence[tuple[int, int]], strides: Sequence[int], pad_shape: Sequence[int],
                       num_anchors: int, device: torch.device | None = None) -> Tensor:
    """(sum H*W*A,) bool over all levels (order y, x, anchor): whether an anchor's grid cell lies on the image's
    own padded area (mmdet's ``valid_flags``: cells up to ceil(pad side / stride)); cells that exist only
    because another image of the batch is larger take no part in the loss."""
    flags = []
    for (height, width), stride in zip(level_sizes, strides):
        valid_h = min(math.ceil(pad_shape[0] / stride), height)
        valid_w = min(math.ceil(pad_shape[1] / stride), width)
        cell = torch.zeros(height, width, dtype=torch.bool, device=device)
        cell[:valid_h, :valid_w] = True
        flags.append(cell[:, :, None].expand(height, width, num_anchors).reshape(-1))
    return torch.cat(flags)
