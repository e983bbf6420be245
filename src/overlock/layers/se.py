"""Squeeze-and-excitation channel attention."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(MLP(avgpool(x)))``, hidden width ``max(16, dim // reduction)``;
    the MLP as 1x1 convolutions (the official state-dict keys)."""

    def __init__(self, dim: int, reduction: int = 8, **dd: Any):
        super().__init__()
        hidden = max(16, dim // reduction)
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, hidden, kernel_size=1, **dd),
            nn.GELU(),
            nn.Conv2d(hidden, dim, kernel_size=1, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.proj(x)
