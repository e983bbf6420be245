"""OverLoCK blocks: the Base-/Overview-Net block, the context-guided Focus-Net block, and the stem and
downsampling layers."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx
from timm.layers import DropPath
from torch import Tensor, nn

from .contmix import (
    REGION_GRID, ContMix, conv_bn, key_projection, pool_to_size_of, query_projection, resize_for_kernel,
)
from .contmix import conv_ffn as ffn_layers  # renamed: ``conv_ffn`` is a switch of RepConvBlock
from .conv import DepthwiseConv2d, DilatedRepConv, ResDWConv
from .norm import GRN, LayerNorm2d
from .scale import LayerScale
from .se import SEModule

torch.fx.wrap("resize_for_kernel")  # shape-dependent: leaf functions for torch.fx where they are called
torch.fx.wrap("pool_to_size_of")


class RepConvBlock(nn.Module):
    """Base-Net and Overview-Net block: residual depthwise conv, then one residual branch of LayerNorm, a
    large-kernel Dilated RepConv with BN and SE, and a GRN ConvFFN (``proj``, the official layer indices).
    ``dilation`` dilates every spatial kernel (a dense backbone's ``output_stride``).

    The switches take the block back along the paper's roadmap (Table 6), each part left out keeping the indices
    of the others: ``rep_conv=False`` a plain depthwise large kernel instead of the Dilated RepConv, ``se=False``
    no SE, ``res_dwconv=False`` no leading residual 3x3 depthwise conv, ``conv_ffn=False`` a plain MLP (no
    depthwise conv and GRN inside).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        mlp_ratio: float = 4,
        ls_init_value: Optional[float] = None,
        res_scale: bool = False,
        drop_path: float = 0.0,
        deploy: bool = False,
        dilation: int = 1,
        rep_conv: bool = True,
        se: bool = True,
        res_dwconv: bool = True,
        conv_ffn: bool = True,
        **dd: Any,
    ):
        super().__init__()
        self.res_scale = res_scale
        self.dwconv = ResDWConv(dim, 3, dilation=dilation, **dd) if res_dwconv else nn.Identity()
        large_kernel = (
            DilatedRepConv(dim, kernel_size, deploy=deploy, dilation=dilation, **dd) if rep_conv
            else DepthwiseConv2d(dim, kernel_size, dilation=dilation, **dd)
        )
        ffn = ffn_layers(dim, int(dim * mlp_ratio), dim, dilation=dilation, **dd)
        if not conv_ffn:  # the depthwise conv and GRN become identities: a plain MLP
            ffn[2], ffn[3] = nn.Identity(), nn.Identity()
        self.proj = nn.Sequential(
            LayerNorm2d(dim, **dd),
            large_kernel,
            nn.BatchNorm2d(dim, **dd),
            SEModule(dim, **dd) if se else nn.Identity(),
            *ffn,
        )
        self.ls = LayerScale(dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(x)
        if self.res_scale:  # the LayerScale scales the shortcut, not the branch
            return self.ls(x) + self.drop_path(self.proj(x))
        return x + self.drop_path(self.ls(self.proj(x)))


class DynamicConvBlock(nn.Module):
    """Focus-Net block: fuses the features with the context channels (and, after the first block, the context
    prior), mixes tokens with ContMix kernels generated from that fused context, and updates both.

    Takes the features ``x`` (B, dim, H, W), the context channels ``ctx`` and the prior (B, ctx_dim, H, W) and
    returns the updated (B, dim + ctx_dim, H, W) map, features first. ``dilation`` dilates every spatial kernel,
    the dynamic ones included (a dense backbone's ``output_stride``).

    The switches build the paper's ablations (Tables 6 and F) from the same block: ``dynamic=False`` a static
    Focus-Net block (no ContMix branch, the Dilated RepConv alone mixes tokens), ``gate=False`` no SiLU gate,
    ``reinject_prior=False`` blocks after the first carry their context channels on without mixing the context
    prior in again, ``affinity`` where the kernels' query and key come from ('context': query from the features,
    key from the context channels; 'reverse': the two swapped; 'fusion': both from the fused map), ``rep_conv=False``
    no Dilated RepConv branch, ``small_kernel=False`` both halves of the groups take the large kernel, and
    ``softmax=False`` the kernels' logits used as weights as they are.
    """

    def __init__(
        self,
        dim: int,
        ctx_dim: int,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        mlp_ratio: float = 4,
        ls_init_value: Optional[float] = None,
        res_scale: bool = False,
        drop_path: float = 0.0,
        is_first: bool = False,
        deploy: bool = False,
        contmix_backend: str = "auto",
        dilation: int = 1,
        dynamic: bool = True,
        gate: bool = True,
        reinject_prior: bool = True,
        affinity: str = "context",
        rep_conv: bool = True,
        small_kernel: bool = True,
        softmax: bool = True,
        **dd: Any,
    ):
        super().__init__()
        if affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, got {affinity!r}")
        if not (dynamic or rep_conv):
            raise ValueError("a Focus-Net block needs the dynamic (ContMix) or the Dilated RepConv branch")
        groups = num_heads * 2
        if dim % (2 * groups) != 0:
            raise ValueError(f"dim {dim} must be divisible by 2 * num_groups = {2 * groups}")
        out_dim = dim + ctx_dim
        self.dim, self.ctx_dim, self.kernel_size, self.dilation = dim, ctx_dim, kernel_size, dilation
        self.res_scale = res_scale
        self.scale = (dim // groups) ** -0.5
        # the first block takes the prior as its context; the others mix the two
        mixes_prior = not is_first and reinject_prior
        self.x_scale = LayerScale(ctx_dim, 1, **dd) if mixes_prior else None
        self.h_scale = LayerScale(ctx_dim, 1, **dd) if mixes_prior else None
        self.affinity = affinity
        self.dwconv1 = ResDWConv(out_dim, 3, dilation=dilation, **dd)
        self.norm1 = LayerNorm2d(out_dim, **dd)
        self.fusion = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=dilation, dilation=dilation, groups=out_dim, **dd),
            nn.BatchNorm2d(out_dim, **dd),
            nn.GELU(),
            nn.Conv2d(out_dim, dim, 1, **dd),
            GRN(dim, **dd),
        )
        if dynamic:
            smk_size = smk_size if small_kernel else kernel_size
            query_dim, key_dim = {"context": (dim, ctx_dim), "reverse": (ctx_dim, dim)}.get(affinity, (out_dim,) * 2)
            self.weight_query = query_projection(dim, in_dim=query_dim, **dd)
            self.weight_key = key_projection(key_dim, dim, **dd)
            self.weight_proj = nn.Conv2d(REGION_GRID**2, kernel_size**2 + smk_size**2, 1, **dd)
            self.dyconv_proj = conv_bn(dim, dim, **dd)
            self.rpb1 = nn.Parameter(torch.zeros(groups, 2 * smk_size - 1, 2 * smk_size - 1, **dd))
            self.rpb2 = nn.Parameter(torch.zeros(groups, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
            self.contmix = ContMix(kernel_size, smk_size, groups, contmix_backend, dilation, softmax=softmax)
        else:
            self.contmix = None
        self.lepe = nn.Sequential(
            DilatedRepConv(dim, kernel_size, deploy=deploy, dilation=dilation, **dd), nn.BatchNorm2d(dim, **dd)
        ) if rep_conv else None
        self.se_layer = SEModule(dim, **dd)
        self.gate = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False, **dd), nn.BatchNorm2d(dim, **dd), nn.SiLU()
        ) if gate else None
        self.proj = nn.Sequential(nn.BatchNorm2d(dim, **dd), nn.Conv2d(dim, out_dim, 1, **dd))
        self.dwconv2 = ResDWConv(out_dim, 3, dilation=dilation, **dd)
        self.norm2 = LayerNorm2d(out_dim, **dd)
        self.mlp = nn.Sequential(*ffn_layers(out_dim, int(dim * mlp_ratio), out_dim, dilation=dilation, **dd))
        self.ls1 = LayerScale(out_dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale(out_dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, ctx: Tensor, ctx_prior: Tensor) -> Tensor:
        if self.x_scale is not None and self.h_scale is not None:
            ctx = self.x_scale(ctx) + self.h_scale(ctx_prior)
        fused = self.dwconv1(torch.cat([x, ctx], dim=1))
        identity = fused
        fused = self.norm1(fused)
        x = self.fusion(fused)
        mixed: Optional[Tensor] = None  # the dynamic and the static branch, or the one the block has
        if self.lepe is not None:
            mixed = self.lepe(x)
        if self.contmix is not None:
            dynamic = self._dynamic_mixing(x, fused)
            mixed = dynamic if mixed is None else dynamic + mixed
        assert mixed is not None  # the constructor keeps one branch at least
        mixed = self.se_layer(mixed)
        if self.gate is not None:
            mixed = self.gate(x) * mixed
        x = self.proj(mixed)
        if self.res_scale:  # the LayerScales scale the shortcuts, not the branches
            x = self.ls1(identity) + self.drop_path(x)
            x = self.dwconv2(x)
            return self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))
        x = identity + self.drop_path(self.ls1(x))
        x = self.dwconv2(x)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


    def _dynamic_mixing(self, x: Tensor, fused: Tensor) -> Tensor:
        """ContMix on the features ``x`` with kernels from the fused map's query and key parts, then 1x1 conv + BN."""
        window = self.kernel_size * self.dilation  # the span a dilated window needs
        value = resize_for_kernel(x, window)
        context = resize_for_kernel(fused, window)
        if self.affinity == "context":
            query_src, key_src = context.split([self.dim, self.ctx_dim], dim=1)
        elif self.affinity == "reverse":
            key_src, query_src = context.split([self.dim, self.ctx_dim], dim=1)
        else:
            query_src, key_src = context, context
        mixed = self.contmix(
            value, self.weight_query(query_src) * self.scale, self.weight_key(key_src),
            self.weight_proj.weight, self.weight_proj.bias, self.rpb1, self.rpb2,
        )
        return self.dyconv_proj(pool_to_size_of(mixed, x))


AFFINITIES = ("context", "reverse", "fusion")


class ContextDownsample(nn.Module):
    """Stride-2 3x3 conv + BN on both the features and the context channels (Focus-Net stride 16 -> 32); stride 1
    and ``dilation`` under a dense backbone's ``output_stride``."""

    def __init__(self, dim: int, out_dim: int, ctx_dim: int, stride: int = 2, dilation: int = 1, **dd: Any):
        super().__init__()
        self.x_proj = conv_bn(dim, out_dim, 3, stride=stride, dilation=dilation, **dd)
        self.h_proj = conv_bn(ctx_dim, ctx_dim, 3, stride=stride, dilation=dilation, **dd)

    def forward(self, x: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        return self.x_proj(x), self.h_proj(ctx)


def stem(in_chans: int, dim: int, **dd: Any) -> nn.Sequential:
    """Four 3x3 conv-BN layers, two of stride 2 (stride 4 overall), GELU between them."""
    half = dim // 2
    return nn.Sequential(
        *conv_bn(in_chans, half, 3, stride=2, **dd), nn.GELU(),
        *conv_bn(half, half, 3, **dd), nn.GELU(),
        *conv_bn(half, dim, 3, stride=2, **dd), nn.GELU(),
        *conv_bn(dim, dim, 3, **dd),
    )
