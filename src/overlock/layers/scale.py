"""Per-channel affine scaling."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Per-channel scale and shift, stored as a depthwise 1x1 conv (weight (C, 1, 1, 1), bias (C,))
    so that official checkpoints load unchanged."""

    def __init__(self, dim: int, init_value: float = 1e-5, **dd: Any):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value), **dd))
        self.bias = nn.Parameter(torch.zeros(dim, **dd))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))
