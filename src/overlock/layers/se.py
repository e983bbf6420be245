"""Squeeze-and-excitation channel attention."""
from __future__ import annotations

from torch import Tensor, nn


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(MLP(avgpool(x))), hidden width max(16, dim // reduction)."""

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        hidden = max(16, dim // reduction)
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.proj(x)

    def rescale_(self, x: Tensor) -> Tensor:
        """``forward`` written over ``x`` (inference on a map nobody else needs)."""
        return x.mul_(self.proj(x))
