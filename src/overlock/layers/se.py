"""Squeeze-and-excitation channel attention."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(MLP(avgpool(x))), hidden width max(16, dim // reduction).

    The MLP is stored as 1x1 convolutions (the official state-dict keys) but computed as matrix products on
    the pooled (B, C) vector: the same sums, without a convolution's per-call overhead on 1x1 maps.
    """

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

    def channel_gate(self, x: Tensor) -> Tensor:
        """The (B, C, 1, 1) factor SE multiplies ``x`` by."""
        _, reduce, act, expand, gate = self.proj
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        hidden = act(F.linear(pooled, reduce.weight.flatten(1), reduce.bias))
        return gate(F.linear(hidden, expand.weight.flatten(1), expand.bias))[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.channel_gate(x)

    def rescale_(self, x: Tensor) -> Tensor:
        """``forward`` written over ``x`` (inference on a map nobody else needs)."""
        return x.mul_(self.channel_gate(x))
