"""Normalisation layers for NCHW feature maps."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (eps 1e-6, as in the official code)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, **dd: Any):
        super().__init__(num_channels, eps=eps, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) on NCHW maps: contrast between channels."""

    def __init__(self, dim: int, **dd: Any):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1, **dd))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1, **dd))

    def forward(self, x: Tensor) -> Tensor:
        spatial_norm = torch.linalg.vector_norm(x, ord=2, dim=(-1, -2), keepdim=True)
        relative = spatial_norm / (spatial_norm.mean(dim=1, keepdim=True) + 1e-6)
        return (self.gamma * relative + 1) * x + self.beta
