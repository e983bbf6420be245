"""mmdetection's FPN neck and the conv block it and the heads are made of, under mmcv's names."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "ConvModule"]


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` without a norm: a conv with bias (state-dict level ``conv``) and an optional ReLU.

    mmcv initialises the conv at construction: Kaiming normal (fan-out, for ReLU), zero bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2)
        self.activate = nn.ReLU(inplace=True) if relu else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.conv(x))


class FPN(nn.Module):
    """mmdet's ``FPN`` as the Mask R-CNN configs use it: 1x1 laterals, a top-down pathway (nearest-neighbour
    upsampling to the finer level's size, added), 3x3 output convs, and ``num_outs - len(in_channels)`` extra levels
    made by ``max_pool2d(kernel 1, stride 2)`` of the last output. No norms, no activations."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be at least the number of inputs ({len(in_channels)})")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1, relu=False) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, relu=False) for _ in in_channels])

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
