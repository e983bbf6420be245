"""OverLoCK blocks: the Base-/Overview-Net block and the context-guided Focus-Net block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module
from torch import Tensor, nn

from .contmix import ContMixMixer, bilinear, conv_ffn, residual, upsized_for_kernel
from .conv import DilatedRepConv, ResDWConv
from .fused import FusedSequential, run_fused
from .norm import GRN, LayerNorm2d
from .prepared import OwnsPreparedWeights, PreparedWeights
from .scale import LayerScale
from .se import SEModule


class RepConvBlock(OwnsPreparedWeights):
    """Base-Net and Overview-Net block: residual depthwise conv, then a large-kernel
    Dilated RepConv mixer with SE fused with a GRN ConvFFN in one residual branch."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        mlp_ratio: float = 4,
        ls_init_value: float | None = None,
        res_scale: bool = False,
        drop_path: float = 0.0,
        deploy: bool = False,
    ):
        super().__init__()
        self.res_scale = res_scale
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim, 3)
        self.proj = nn.Sequential(
            LayerNorm2d(dim),
            DilatedRepConv(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
            SEModule(dim),
            *conv_ffn(dim, hidden, dim),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.prepared = PreparedWeights()  # the prepared convolutions of ``proj``

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(x)
        *layers, drop_path = self.proj
        branch = run_fused(layers, x, self.prepared)
        return residual(x, branch, self.ls, drop_path, self.res_scale)


@register_notrace_module  # shape-dependent resizing: a leaf for torch.fx
class DynamicConvBlock(ContMixMixer):
    """Focus-Net block: fuses the features with the context prior, mixes tokens with ContMix
    kernels generated from that context, and updates both (the context channels ride along).

    Takes ``(x, ctx, ctx_prior)`` and returns ``(x, ctx)``; the last block of the network
    returns ``(x_with_ctx_channels, None)``.
    """

    def __init__(
        self,
        dim: int,
        ctx_dim: int,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        mlp_ratio: float = 4,
        ls_init_value: float | None = None,
        res_scale: bool = False,
        drop_path: float = 0.0,
        is_first: bool = False,
        is_last: bool = False,
        deploy: bool = False,
    ):
        super().__init__()
        ctx_dim = ctx_dim // 4
        out_dim = dim + ctx_dim
        self.dim, self.ctx_dim = dim, ctx_dim
        self.is_first, self.is_last = is_first, is_last
        if not is_first:
            self.x_scale = LayerScale(ctx_dim, 1)
            self.h_scale = LayerScale(ctx_dim, 1)
        self.dwconv1 = ResDWConv(out_dim, 3)
        self.norm1 = LayerNorm2d(out_dim)
        self.fusion = FusedSequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim),
            nn.BatchNorm2d(out_dim),
            nn.GELU(),
            nn.Conv2d(out_dim, dim, 1),
            GRN(dim),
        )
        self._init_mixer(dim, ctx_dim, kernel_size, smk_size, num_heads)
        self.dyconv_proj = FusedSequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self._init_output(
            dim, out_dim, kernel_size, mlp_ratio, ls_init_value, res_scale, drop_path, LayerNorm2d, deploy
        )

    def forward(self, x: Tensor, ctx: Tensor, ctx_prior: Tensor) -> tuple[Tensor, Tensor | None]:
        height, width = x.shape[-2:]
        if not self.is_first:
            ctx = self.x_scale(ctx) + self.h_scale(ctx_prior)
        fused = self.dwconv1(torch.cat([x, ctx], dim=1))
        identity = fused
        fused = self.norm1(fused)
        x = self.fusion(fused)
        gate = self.gate(x)
        lepe = self.lepe(x)
        size = upsized_for_kernel(height, width, self.kernel_size)
        if size is not None:
            x, fused = bilinear(x, size), bilinear(fused, size)
        query_src, key_src = fused.split([self.dim, self.ctx_dim], dim=1)
        x = self.dynamic_conv(x, query_src, key_src)
        if size is not None:
            x = F.adaptive_avg_pool2d(x, (height, width))
        x = self._output(self.dyconv_proj(x), gate, lepe, identity)
        if self.is_last:
            return x, None
        x, ctx = x.split([self.dim, self.ctx_dim], dim=1)
        return x, ctx


class ContextDownsample(nn.Module):
    """Stride-2 3x3 conv + BN on both the features and the context channels (Focus-Net 3 -> 4)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.x_proj = conv_bn(dim, out_dim, stride=2)
        self.h_proj = conv_bn(out_dim // 4, out_dim // 4, stride=2)

    def forward(self, x: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        return self.x_proj(x), self.h_proj(ctx)


def conv_bn(in_dim: int, out_dim: int, stride: int = 1) -> FusedSequential:
    """3x3 conv (no bias) + BatchNorm; with stride 2 it is the stage downsampling layer."""
    return FusedSequential(
        nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_dim)
    )


def stem(in_chans: int, dim: int) -> FusedSequential:
    """Four 3x3 conv-BN layers, two of stride 2 (stride 4 overall), GELU between them."""
    half = dim // 2
    return FusedSequential(
        *conv_bn(in_chans, half, stride=2), nn.GELU(),
        *conv_bn(half, half), nn.GELU(),
        *conv_bn(half, dim, stride=2), nn.GELU(),
        *conv_bn(dim, dim),
    )
