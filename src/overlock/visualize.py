"""See what a model does: effective receptive fields and class-activation maps.

- ``effective_receptive_field``: how strongly each input pixel influences the centre of a feature map,
  the gradient-based measure of Luo et al. (2016) as used by RepLKNet and the OverLoCK paper
  (|d centre / d input| summed over channels, averaged over images).
- ``grad_cam``: Grad-CAM (Selvaraju et al., 2017) on the final Focus-Net features.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def effective_receptive_field(feature_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """(H, W) map of the mean absolute gradient of the centre feature (summed over channels)
    with respect to each input pixel, over ``images`` (N, C, H, W)."""
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for image in images:
        x = image[None].detach().clone().requires_grad_(True)
        feats = feature_fn(x)
        h, w = feats.shape[-2:]
        centre = feats[0, :, h // 2, w // 2].sum()
        (grad,) = torch.autograd.grad(centre, x)
        total += grad[0].abs().sum(0).double()
    return (total / len(images)).float()


def erf_high_contribution_area(erf: Tensor, threshold: float = 0.2) -> float:
    """Fraction of the input covered by the smallest centred square holding ``threshold`` of the
    ERF's total contribution (the 'high-contribution area ratio' of RepLKNet)."""
    h, w = erf.shape
    total = erf.sum()
    for half in range(0, max(h, w)):
        top, left = max(h // 2 - half, 0), max(w // 2 - half, 0)
        window = erf[top : h // 2 + half + 1, left : w // 2 + half + 1]
        if window.sum() >= threshold * total:
            return window.numel() / erf.numel()
    return 1.0


def grad_cam(
    features_fn: Callable[[Tensor], Tensor],
    head_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    target: int | None = None,
) -> tuple[Tensor, int]:
    """Class-activation map (H, W) in [0, 1] at the image's resolution, and the class it explains
    (the top prediction when ``target`` is None)."""
    feats = features_fn(image[None]).detach().requires_grad_(True)
    logits = head_fn(feats)
    target = int(logits.argmax(1)) if target is None else target
    (grad,) = torch.autograd.grad(logits[0, target], feats)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max().clamp_min(1e-12)).detach(), target


def level_features(model: nn.Module, level: int) -> Callable[[Tensor], Tensor]:
    """A function returning pyramid level ``level`` (0-3, strides 4-32) of a timm model."""

    def features(x: Tensor) -> Tensor:
        return model.forward_intermediates(x, indices=[level], intermediates_only=True)[0]

    return features
