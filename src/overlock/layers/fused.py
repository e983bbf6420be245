"""Sequential containers that fold eval-mode BatchNorms into neighbouring convolutions on the fly.

In eval mode a BatchNorm is a per-channel affine map, so ``BN(conv(x))`` is one convolution with a
rescaled weight and a shifted bias, and ``conv1x1(BN(x))`` likewise. Folding at call time (weight-sized
work) saves a full pass over the feature map per BatchNorm while the parameters, and so the state dict,
stay exactly the official ones. Training mode runs the layers as they are.
"""
from __future__ import annotations

from typing import Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from .conv import DilatedRepConv, fuse_conv_bn


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Scale and shift of an eval-mode BatchNorm."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


def _foldable(bn: nn.Module) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None


def _plain_conv(m: nn.Module) -> nn.Conv2d | None:
    """The convolution computing ``m`` (a conv, or a merged Dilated RepConv), when it can absorb a BN."""
    if isinstance(m, DilatedRepConv):
        m = m.lk_origin if m.deployed else None
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return m
    return None


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding == (0, 0)


def run_folding_bn(layers: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Apply ``layers`` in order, folding eval-mode BatchNorms into the adjacent convolution."""
    layers = list(layers)
    i = 0
    while i < len(layers):
        layer, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        conv = _plain_conv(layer)
        if conv is not None and nxt is not None and _foldable(nxt):  # conv -> BN
            weight, bias = fuse_conv_bn(conv.weight, conv.bias, nxt)
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            i += 2
        elif _foldable(layer) and nxt is not None and _is_pointwise(nxt):  # BN -> 1x1 conv
            scale, shift = _bn_affine(layer)
            weight = nxt.weight * scale.reshape(1, -1, 1, 1)
            bias = nxt.weight.flatten(1) @ shift
            if nxt.bias is not None:
                bias = bias + nxt.bias
            x = F.conv2d(x, weight, bias)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


class FoldingSequential(nn.Sequential):
    """``nn.Sequential`` (same children, same state-dict keys) that folds eval-mode BatchNorms."""

    def forward(self, x: Tensor) -> Tensor:
        return run_folding_bn(self, x)
