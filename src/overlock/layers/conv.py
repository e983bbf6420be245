"""Convolutions: residual depthwise conv and the Dilated RepConv of UniRepLKNet."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from ..ops.depthwise import depthwise_conv2d, dilated_to_dense
from .prepared import OwnsPreparedWeights, PreparedConv, PreparedWeights, kernel_choice, packing_applies, prepare_conv

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


class ResDWConv(OwnsPreparedWeights, nn.Conv2d):
    """Depthwise conv with a residual connection: x + dwconv(x).

    The identity is folded into the kernel's centre tap, so the sum costs no extra pass over the map; CPU
    inference keeps that kernel prepared (``overlock.layers.prepared``).
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        identity = torch.zeros_like(self.weight)
        identity[:, :, kernel_size // 2, kernel_size // 2] = 1
        self.register_buffer("identity", identity, persistent=False)  # not in the state dict
        self.prepared = PreparedWeights()

    def kernel(self) -> Tensor:
        """The depthwise kernel with the identity in its centre tap."""
        return self.weight + self.identity

    def sources(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """The tensors ``kernel()`` and the bias are made of."""
        return self.weight, self.bias, self.identity

    def forward(self, x: Tensor) -> Tensor:
        sources = self.sources()
        if packing_applies(x, *sources):
            return self.prepared.get(0, sources, kernel_choice(self), partial(self._packed, x))(x)
        return F.conv2d(x, self.kernel(), self.bias, padding=self.padding, groups=self.groups)

    def _packed(self, x: Tensor) -> PreparedConv:
        return prepare_conv(x, self, self.kernel(), self.bias, pack=True)


@register_notrace_module  # device-dependent backward choice: a leaf for torch.fx
class DepthwiseConv2d(nn.Conv2d):
    """Stride-1 'same' depthwise conv whose CPU weight gradient is fast for large kernels
    (see ``overlock.ops.depthwise``); parameters as ``nn.Conv2d``."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = False):
        padding = (dilation * (kernel_size - 1) + 1) // 2
        super().__init__(
            channels, channels, kernel_size, padding=padding, dilation=dilation, groups=channels, bias=bias
        )

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.padding[0], self.dilation[0])


def bn_scale(bn: nn.BatchNorm2d) -> Tensor:
    """Per-channel factor of an eval-mode BatchNorm: weight / sqrt(running_var + eps)."""
    return bn.weight / (bn.running_var + bn.eps).sqrt()


def fuse_conv_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv's weight and bias."""
    scale = bn_scale(bn)
    conv_bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (conv_bias - bn.running_mean) * scale


class DilatedRepConv(nn.Module):
    """Large-kernel depthwise conv plus parallel dilated small-kernel branches, each with BN.

    ``reparameterize()`` merges every branch into one large-kernel conv with bias (the deploy form);
    module and parameter names follow the official checkpoints.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f"Dilated RepConv supports kernel sizes {sorted(DILATED_BRANCHES)}, got {kernel_size}"
            )
        self.kernel_size = kernel_size
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, bias=deploy)
        self.branches = tuple(zip(*DILATED_BRANCHES[kernel_size]))
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels)
            for k, r in self.branches:
                self.add_module(f"dil_conv_k{k}_{r}", DepthwiseConv2d(channels, k, dilation=r))
                self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels))

    @property
    def deployed(self) -> bool:
        return not hasattr(self, "origin_bn")

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge all branches and BNs into ``lk_origin`` (in place; a no-op when already merged)."""
        if self.deployed:
            return
        weight, bias = fuse_conv_bn(self.lk_origin.weight, self.lk_origin.bias, self.origin_bn)
        for k, r in self.branches:
            branch_w, branch_b = fuse_conv_bn(
                getattr(self, f"dil_conv_k{k}_{r}").weight, None, getattr(self, f"dil_bn_k{k}_{r}")
            )
            dense = dilated_to_dense(branch_w, r)
            pad = (self.kernel_size - dense.shape[-1]) // 2
            weight = weight + F.pad(dense, [pad] * 4)
            bias = bias + branch_b
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        channels = weight.shape[0]
        merged = DepthwiseConv2d(channels, self.kernel_size, bias=True).to(weight.device, weight.dtype)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        del self.origin_bn
