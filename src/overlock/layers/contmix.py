"""ContMix: context-mixing dynamic kernels, and the plug-and-play ContMix block.

Every token's affinities to the 7x7 pooled region centres of a context map are projected
into two per-pixel kernels (a small one and a large one, in groups), which are then applied
to the value map with neighbourhood semantics (see ``overlock.ops``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops import LowRankLogits, contmix_apply
from .conv import DilatedRepConv, ResDWConv
from .fused import FusedSequential, runs_without_grad, shares_no_memory
from .norm import GRN, LayerNorm2d
from .scale import LayerScale
from .se import SEModule

REGION_GRID = 7  # the context is pooled to 7 x 7 region centres


def upsized_for_kernel(height: int, width: int, kernel_size: int) -> tuple[int, int] | None:
    """Size a map is resized to when it is smaller than the kernel (None when it fits).

    The shorter side becomes the kernel size and the other keeps the aspect ratio, truncated,
    exactly as the official code computes it.
    """
    if min(height, width) >= kernel_size:
        return None
    if height < width:
        return kernel_size, int(kernel_size / height * width)
    return int(kernel_size / width * height), kernel_size


def bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize without corner alignment (the official resizing of small maps)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_ffn(dim: int, hidden: int, out_dim: int) -> FusedSequential:
    """ConvFFN: 1x1 conv, GELU, residual 3x3 depthwise conv, GRN, 1x1 conv."""
    return FusedSequential(
        nn.Conv2d(dim, hidden, 1),
        nn.GELU(),
        ResDWConv(hidden, 3),
        GRN(hidden),
        nn.Conv2d(hidden, out_dim, 1),
    )


def residual(shortcut: Tensor, branch: Tensor, ls: nn.Module, drop_path: nn.Module, res_scale: bool) -> Tensor:
    """Residual sum; with ``res_scale`` the LayerScale scales the shortcut, not the branch.

    Without LayerScale, in inference the sum is written over the branch's own output (the same sums; a
    map-sized allocation saved, which costs about as much as the sum on large maps).
    """
    in_place = (
        isinstance(ls, nn.Identity)
        and not drop_path.training
        and runs_without_grad(branch, shortcut)
        and branch.shape == shortcut.shape
        and branch.dtype == shortcut.dtype  # else the sum's dtype is promoted
        and shares_no_memory(branch, shortcut)
    )
    if in_place:
        return branch.add_(shortcut)
    if res_scale:
        return ls(shortcut) + drop_path(branch)
    return shortcut + drop_path(ls(branch))


class ContMixMixer(nn.Module):
    """Dynamic-kernel generation and application shared by the ContMix and Focus-Net blocks.

    ``num_heads`` follows the official variant tables; it is doubled into ``num_groups``
    groups, each of which gets a ``smk_size`` kernel and a ``kernel_size`` kernel applied to
    separate halves of the value channels. Subclasses own these parameters directly so that
    official state-dict keys stay flat.
    """

    def _init_mixer(self, dim: int, key_dim: int, kernel_size: int, smk_size: int, num_heads: int) -> None:
        self.kernel_size = kernel_size
        self.smk_size = smk_size
        self.num_groups = num_heads * 2
        if dim % (2 * self.num_groups) != 0:
            raise ValueError(f"dim {dim} must be divisible by 2 * num_groups = {2 * self.num_groups}")
        self.scale = (dim // self.num_groups) ** -0.5
        self.weight_query = FusedSequential(nn.Conv2d(dim, dim // 2, 1, bias=False), nn.BatchNorm2d(dim // 2))
        self.weight_key = FusedSequential(
            nn.AdaptiveAvgPool2d(REGION_GRID),
            nn.Conv2d(key_dim, dim // 2, 1, bias=False),
            nn.BatchNorm2d(dim // 2),
        )
        self.weight_proj = nn.Conv2d(REGION_GRID**2, kernel_size**2 + smk_size**2, 1)
        self.rpb1 = nn.Parameter(torch.zeros(self.num_groups, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(torch.zeros(self.num_groups, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def _init_output(
        self,
        dim: int,
        out_dim: int,
        kernel_size: int,
        mlp_ratio: float,
        ls_init_value: float | None,
        res_scale: bool,
        drop_path: float,
        norm_layer: Callable[[int], nn.Module],
        deploy: bool,
    ) -> None:
        """The parts after the dynamic convolution: large-kernel positional term, SE, gate, output
        projection to ``out_dim``, residuals and the ConvFFN."""
        self.lepe = FusedSequential(DilatedRepConv(dim, kernel_size, deploy=deploy), nn.BatchNorm2d(dim))
        self.se_layer = SEModule(dim)
        self.gate = FusedSequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = FusedSequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
        self.dwconv2 = ResDWConv(out_dim, 3)
        self.norm2 = norm_layer(out_dim)
        self.mlp = conv_ffn(out_dim, int(dim * mlp_ratio), out_dim)
        self.ls1 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.res_scale = res_scale

    def _output(self, mixed: Tensor, gate: Tensor, lepe: Tensor, identity: Tensor) -> Tensor:
        """Gate the mixed tokens, add the token-mixer residual, then the ConvFFN residual."""
        x = self.proj(gate * self.se_layer(mixed + lepe))
        x = residual(identity, x, self.ls1, self.drop_path, self.res_scale)
        x = self.dwconv2(x)
        return residual(x, self.mlp(self.norm2(x)), self.ls2, self.drop_path, self.res_scale)

    def dynamic_conv(self, value: Tensor, query_src: Tensor, key_src: Tensor) -> Tensor:
        """Apply the generated kernels to ``value`` (B, dim, H, W); H and W must fit the kernel."""
        batch, dim, height, width = value.shape
        groups = self.num_groups
        query = self.weight_query(query_src) * self.scale
        key = self.weight_key(key_src)
        query = query.reshape(batch, groups, -1, height * width).transpose(-1, -2)  # (B, G, HW, c)
        key = key.reshape(batch, groups, -1, REGION_GRID**2)  # (B, G, c, 49)
        # logits = (query . key) @ proj^T + b, computed as query . (key @ proj^T) + b: same sums, a third of
        # the arithmetic (c < 49 channels a group), and each kernel's logits come out contiguous
        key_proj = key @ self.weight_proj.weight.flatten(1).t()  # (B, G, c, k^2 + K^2)
        sizes = [self.smk_size**2, self.kernel_size**2]
        small, large = (
            LowRankLogits(query, part, bias)
            for part, bias in zip(key_proj.split(sizes, dim=-1), self.weight_proj.bias.split(sizes))
        )
        v_small, v_large = value.reshape(batch, 2, groups, dim // (2 * groups), height, width).permute(
            1, 0, 2, 4, 5, 3
        )
        out_small = contmix_apply(small, v_small, self.smk_size, self.rpb1)
        out_large = contmix_apply(large, v_large, self.kernel_size, self.rpb2)
        out = torch.cat([out_small, out_large], dim=1)  # (B, 2G, H, W, C)
        if value.is_contiguous(memory_format=torch.channels_last):  # stay NHWC: no layout shuffle downstream
            return out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, dim).permute(0, 3, 1, 2)
        return out.permute(0, 1, 4, 2, 3).reshape(batch, dim, height, width)


@register_notrace_module  # shape-dependent resizing: a leaf for torch.fx
class ContMixBlock(ContMixMixer):
    """The plug-and-play ContMix block of the official ``contmix.py``: a ContMix token mixer
    (dynamic kernels from the block's own input) followed by a ConvFFN, on NCHW maps.

    Args:
        dim: channels in and out.
        kernel_size: large dynamic kernel (and Dilated RepConv) size, odd, 5 to 19.
        smk_size: small dynamic kernel size.
        num_heads: kernel heads; doubled into groups (half small kernel, half large).
        mlp_ratio: hidden width of the ConvFFN.
        res_scale: scale the residual branch instead of the block output.
        ls_init_value: LayerScale init, or None for no LayerScale.
        drop_path: stochastic depth rate.
        norm_layer: normalisation before the mixer and the ConvFFN (channels -> module).
        deploy: build the Dilated RepConv already merged (see ``reparameterize``).
        use_checkpoint: recompute the block in the backward pass to save memory.
    """

    def __init__(
        self,
        dim: int = 64,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        mlp_ratio: float = 4,
        res_scale: bool = False,
        ls_init_value: float | None = None,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
        deploy: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.dwconv1 = ResDWConv(dim, 3)
        self.norm1 = norm_layer(dim)
        self._init_mixer(dim, dim, kernel_size, smk_size, num_heads)
        nn.init.trunc_normal_(self.rpb1, std=0.02)
        nn.init.trunc_normal_(self.rpb2, std=0.02)
        self.weight_value = FusedSequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.fusion_proj = FusedSequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self._init_output(dim, dim, kernel_size, mlp_ratio, ls_init_value, res_scale, drop_path, norm_layer, deploy)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = self.dwconv1(x)
        identity = x
        x = self.norm1(x)
        gate = self.gate(x)
        lepe = self.lepe(x)
        size = upsized_for_kernel(height, width, self.kernel_size)
        if size is not None:
            x = bilinear(x, size)
        x = self.dynamic_conv(self.weight_value(x), x, x)
        if size is not None:
            x = F.adaptive_avg_pool2d(x, (height, width))
        return self._output(self.fusion_proj(x), gate, lepe, identity)

    def reparameterize(self) -> None:
        """Merge the Dilated RepConv branches (in place) for inference."""
        self.lepe[0].reparameterize()
