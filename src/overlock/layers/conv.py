"""Convolutions: depthwise conv (the ``overlock::depthwise_conv2d`` op), residual depthwise conv, and the
Dilated RepConv of UniRepLKNet."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise import dilated_to_dense

# large kernel -> (branch kernel sizes, branch dilations), the UniRepLKNet defaults used by OverLoCK
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    5: ((3, 3), (1, 2)),
    7: ((5, 3, 3, 3), (1, 1, 2, 3)),
    9: ((5, 7, 5, 3, 3), (1, 1, 2, 3, 4)),
    11: ((5, 7, 5, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    13: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    15: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 5, 7)),
    17: ((5, 7, 9, 3, 3, 3), (1, 1, 2, 4, 5, 7)),
    19: ((5, 7, 9, 9, 3, 3, 3), (1, 1, 1, 2, 4, 5, 7)),
}


class DepthwiseConv2d(nn.Conv2d):
    """Stride-1 'same' depthwise conv run by ``overlock::depthwise_conv2d`` (fast CPU weight gradient for large
    kernels, dilated kernels as dense ones on CPUs); parameters as ``nn.Conv2d``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = False, **dd: Any):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            channels, channels, kernel_size, padding=padding, dilation=dilation, groups=channels, bias=bias, **dd
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.overlock.depthwise_conv2d(x, self.weight, self.bias, self.padding[0], self.dilation[0])


class ResDWConv(nn.Conv2d):
    """Depthwise conv with a residual connection: ``x + dwconv(x)`` ('same' padding, optionally dilated)."""

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, **dd: Any):
        super().__init__(
            dim, dim, kernel_size=kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, groups=dim,
            **dd,
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def kernel(self) -> Tensor:
        """The depthwise kernel of the whole function: the identity added to its centre tap."""
        centre = self.kernel_size[0] // 2
        return self.weight + F.pad(self.weight.new_ones(self.weight.shape[0], 1, 1, 1), [centre] * 4)


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Per-channel scale and shift of an eval-mode BatchNorm."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


def fuse_conv_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of a conv followed by an eval-mode BatchNorm."""
    scale, shift = bn_scale_shift(bn)
    conv_bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), shift + conv_bias * scale


class DilatedRepConv(nn.Module):
    """Large-kernel depthwise conv plus parallel dilated small-kernel branches, each followed by a BatchNorm.

    Children are (conv, BN) pairs in order: the large kernel (``lk_origin``, ``origin_bn``), then each dilated
    branch (``dil_conv_k{k}_{r}``, ``dil_bn_k{k}_{r}``), the official names; the output is the sum of the pairs.
    ``reparameterize()`` merges every pair into one large-kernel conv with bias (the deploy form, only
    ``lk_origin``). ``dilation`` spreads the whole block out (for a dense backbone's ``output_stride``): every
    conv's dilation is multiplied by it.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False, dilation: int = 1, **dd: Any):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"Dilated RepConv supports kernel sizes {sorted(DILATED_BRANCHES)}, got {kernel_size}")
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, dilation=dilation, bias=deploy, **dd)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels, **dd)
            for k, r in zip(*DILATED_BRANCHES[kernel_size]):
                self.add_module(f"dil_conv_k{k}_{r}", DepthwiseConv2d(channels, k, dilation=r * dilation, **dd))
                self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels, **dd))

    def forward(self, x: Tensor) -> Tensor:
        out: Optional[Tensor] = None
        branch = x
        for i, layer in enumerate(self.children()):  # conv, BN, conv, BN, ...; the deploy form is one conv
            if i % 2 == 0:
                branch = layer(x)
            else:
                out = layer(branch) if out is None else out + layer(branch)
        return branch if out is None else out

    def merged_kernel(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of the one large-kernel conv (``lk_origin``'s dilation) that computes this block in eval
        mode."""
        layers = list(self.children())
        if len(layers) == 1:
            return self.lk_origin.weight, self.lk_origin.bias
        weight = bias = None
        for conv, bn in zip(layers[::2], layers[1::2]):
            branch_w, branch_b = fuse_conv_bn(conv.weight, conv.bias, bn)
            dense = dilated_to_dense(branch_w, conv.dilation[0] // self.dilation)
            dense = F.pad(dense, [(self.kernel_size - dense.shape[-1]) // 2] * 4)
            weight = dense if weight is None else weight + dense
            bias = branch_b if bias is None else bias + branch_b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge all branches and BatchNorms into ``lk_origin`` (in place; a no-op when already merged)."""
        if not hasattr(self, "origin_bn"):
            return
        weight, bias = self.merged_kernel()
        merged = DepthwiseConv2d(
            weight.shape[0], self.kernel_size, dilation=self.dilation, bias=True, device=weight.device,
            dtype=weight.dtype,
        )
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        for name in [name for name, _ in self.named_children() if name != "lk_origin"]:
            delattr(self, name)
        self.lk_origin = merged


class ConvBNReLU(nn.Module):
    """Conv (no bias), BatchNorm, ReLU, under the names of mmcv's ``ConvModule`` (``conv``, ``bn``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, **dd: Any):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.activate = nn.ReLU(inplace=True)
        # mmcv initialises the conv at construction (Kaiming normal, fan-out, for ReLU), the BN to (1, 0)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))
