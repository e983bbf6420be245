"""Pasting the mask head's 28x28 probabilities into the image, as mmdet 2.x's ``FCNMaskHead.get_seg_masks``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks"]


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5) -> Tensor:
    """Binary (N, height, width) masks from probabilities (N, M, M) inside boxes (N, 4) in the same pixels.

    Every pixel centre (i + 0.5) maps to the grid coordinate (c - x1) / (x2 - x1) * 2 - 1 (same for y) of its box,
    sampled bilinearly (``grid_sample``, ``align_corners=False``, zero padding); a pixel is in the mask when the
    sample is >= ``threshold``. As mmdet does on the CPU, only a window around each box (one pixel wider on each
    side) is sampled and the rest stays empty; sampling everywhere gives the same masks, since a sample outside its
    box mixes in at most half of an edge value. (torchvision's ``paste_masks_in_image`` instead resizes the mask to
    the integer box and thresholds at > 0.5.)
    """
    masks = torch.zeros(probs.shape[0], height, width, dtype=torch.bool, device=probs.device)
    for mask, prob, box in zip(masks, probs, boxes):
        left = max(int(torch.floor(box[0]).item()) - 1, 0)
        top = max(int(torch.floor(box[1]).item()) - 1, 0)
        right = min(int(torch.ceil(box[2]).item()) + 1, width)
        bottom = min(int(torch.ceil(box[3]).item()) + 1, height)
        if right <= left or bottom <= top:
            continue
        mask[top:bottom, left:right] = _sample_box(prob, box, top, bottom, left, right) >= threshold
    return masks


def _sample_box(prob: Tensor, box: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """The mask probability at the pixel centres of rows top..bottom-1 and columns left..right-1."""
    ys = torch.arange(top, bottom, device=prob.device).to(torch.float32) + 0.5
    xs = torch.arange(left, right, device=prob.device).to(torch.float32) + 0.5
    ys = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
    xs = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
    # a zero-size box: mmdet samples the mask's centre column or row instead of dividing by zero
    xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)
    ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return F.grid_sample(prob[None, None].to(torch.float32), grid[None], align_corners=False)[0, 0]
