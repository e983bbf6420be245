"""ContMix: context-mixing dynamic kernels, and the plug-and-play ContMix block.

Every token's affinities to the 7x7 pooled region centres of a context map are projected into two per-pixel
kernels (a small one and a large one, in groups), which are then applied to the value map with neighbourhood
semantics (see ``overlock.ops``). ``ContMix`` is that mixing step as a module of its own, without parameters:
the blocks that use it keep the projections under the official state-dict names and hand them over, and an
inference conversion can put a fused module in its place.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, register_notrace_module
from torch import Tensor, nn

from ..ops import check_backend_name, contmix_apply
from .conv import DilatedRepConv, ResDWConv
from .norm import GRN, LayerNorm2d
from .scale import LayerScale
from .se import SEModule

REGION_GRID = 7  # the context is pooled to 7 x 7 region centres

torch.fx.wrap("contmix_apply")  # shape-dependent: leaf functions for torch.fx where they are called


@register_notrace_function  # shape-dependent: a leaf function for timm's and torchvision's fx tracing
def resize_for_kernel(x: Tensor, kernel_size: int) -> Tensor:
    """``x`` resized up (bilinear, no corner alignment) when a side is smaller than the kernel, as the official
    code does: the shorter side becomes the kernel size and the other keeps the aspect ratio, truncated."""
    if not torch.jit.is_scripting():
        if has_symbolic_size(x):
            return _resize_for_kernel_symbolic(x, kernel_size)
    height, width = x.shape[-2], x.shape[-1]
    if min(height, width) >= kernel_size:
        return x
    if height < width:
        size = [kernel_size, int(kernel_size / height * width)]
    else:
        size = [int(kernel_size / width * height), kernel_size]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_notrace_function
def pool_to_size_of(x: Tensor, reference: Tensor) -> Tensor:
    """``x`` average-pooled back to the spatial size of ``reference`` (a no-op when it has it)."""
    if not torch.jit.is_scripting():
        if has_symbolic_size(reference):
            return F.adaptive_avg_pool2d(x, reference.shape[-2:])  # an exact copy where the sizes are equal
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.adaptive_avg_pool2d(x, reference.shape[-2:])


@torch.jit.unused
def has_symbolic_size(x: Tensor) -> bool:
    """Whether the spatial size of ``x`` is symbolic: traced by ``torch.export`` (or compiled) for every image
    size at once, so that a branch on the size cannot be taken in Python."""
    return isinstance(x.shape[-2], torch.SymInt) or isinstance(x.shape[-1], torch.SymInt)


def resized_size(height: Any, width: Any, kernel_size: int) -> tuple[Any, Any]:
    """The size :func:`resize_for_kernel` gives an ``height`` x ``width`` map, without a branch, so that it also
    holds for symbolic sizes (``torch.SymInt``): ``s = max(1, K / short side)``; the long side becomes
    ``int(s * long)`` (the official ``int(K / short * long)``, or the side itself when ``s`` is 1) and the short side
    ``max(short, K)``. Taking ``max(int(s * side), side, K)`` for both sides gives exactly that: the short side's
    ``int(K / short * short)`` is K or just below it, and the long side's is at least K and at least the side.
    (An official square map of side ``n < K`` where float rounding makes ``int(K / n * n)`` K - 1, which the
    kernel then does not fit, gets K here; it happens for no kernel size of the OverLoCK variants.)"""
    scale = torch.sym_max(1.0, kernel_size / torch.sym_min(height, width))
    new_height = torch.sym_max(torch.sym_int(scale * height), torch.sym_max(height, kernel_size))
    new_width = torch.sym_max(torch.sym_int(scale * width), torch.sym_max(width, kernel_size))
    return new_height, new_width


@torch.jit.unused
def _resize_for_kernel_symbolic(x: Tensor, kernel_size: int) -> Tensor:
    """:func:`resize_for_kernel` for every size at once: always an interpolation, to :func:`resized_size`, which
    copies the map exactly where no side is smaller than the kernel (bilinear at scale 1)."""
    size = resized_size(x.shape[-2], x.shape[-1], kernel_size)
    return F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)


torch.fx.wrap("resize_for_kernel")
torch.fx.wrap("pool_to_size_of")


def grouped_query_and_key(query: Tensor, key: Tensor, proj_weight: Tensor, groups: int) -> Tuple[Tensor, Tensor]:
    """The query per group as (B, G, HW, c), and the region keys projected by ``proj_weight`` per group as
    (B, G, c, k^2 + K^2): their product is the kernels' logits."""
    batch = query.shape[0]
    query = query.reshape(batch, groups, query.shape[1] // groups, -1).transpose(-1, -2)
    key = key.reshape(batch, groups, key.shape[1] // groups, -1)  # (B, G, c, 49)
    return query, key @ proj_weight.flatten(1).t()


def value_halves(value: Tensor, groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The value (B, C, H, W) as two halves of (B, G, H, W, C / 2G), one per kernel size; an output map in the
    value's layout; and that output's view as the two halves (B, 2, G, C / 2G, H, W) to write them into."""
    batch, channels, height, width = value.shape
    per_group = channels // (2 * groups)
    values = value.reshape(batch, 2, groups, per_group, height, width).permute(1, 0, 2, 4, 5, 3)
    out = torch.empty_like(value)  # the caller's layout
    return values, out, out.view(batch, 2, groups, per_group, height, width)


@register_notrace_module  # shape checks in the op: a leaf for timm's fx tracing
class ContMix(nn.Module):
    """The dynamic-kernel mixing of ContMix.

    ``num_groups`` groups, each with a ``smk_size`` and a ``kernel_size`` kernel, applied to the two halves of
    the value channels. Per group, each token's affinities to the region keys are projected by ``proj_weight``
    (K^2 + k^2, 49) and ``proj_bias`` into the kernels' logits; ``rpb_small`` / ``rpb_large`` are the relative
    position biases. ``backend`` names the kernel application's backend (see ``overlock.ops``). With ``dilation``
    d both kernels take neighbours d apart (NATTEN's dilated neighbourhoods), for a dense backbone's
    ``output_stride``. ``softmax=False`` (an ablation of the paper's Table F) uses the logits plus the position
    bias as the kernels' weights without normalising them.
    """

    def __init__(self, kernel_size: int, smk_size: int, num_groups: int, backend: str = "auto", dilation: int = 1,
                 softmax: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.smk_size = smk_size
        self.num_groups = num_groups
        self.backend = check_backend_name(backend)
        self.dilation = dilation
        self.softmax = softmax

    def extra_repr(self) -> str:
        dilation = f", dilation={self.dilation}" if self.dilation != 1 else ""
        softmax = "" if self.softmax else ", softmax=False"
        return (f"kernel_size={self.kernel_size}, smk_size={self.smk_size}, groups={self.num_groups}, "
                f"backend={self.backend}{dilation}{softmax}")

    def _kernel_sum(self, logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor) -> Tensor:
        """The kernels from ``logits`` applied to ``value`` (softmax-normalised unless ``softmax=False``)."""
        return contmix_apply(logits, value, kernel_size, rpb, self.backend, self.dilation, self.softmax)

    def forward(
        self, value: Tensor, query: Tensor, key: Tensor, proj_weight: Tensor, proj_bias: Optional[Tensor],
        rpb_small: Tensor, rpb_large: Tensor,
    ) -> Tensor:
        """Mix ``value`` (B, C, H, W) with kernels from ``query`` (B, C/2, H, W) and region ``key`` (B, C/2, 7, 7)."""
        batch, _, height, width = value.shape
        query, key_proj = grouped_query_and_key(query, key, proj_weight, self.num_groups)
        # (query . key) @ proj^T computed as query . (key @ proj^T): the same sums, a third of the arithmetic
        logits = query @ key_proj  # (B, G, HW, k^2 + K^2)
        if proj_bias is not None:
            logits = logits + proj_bias
        logits = logits.reshape(batch, self.num_groups, height, width, -1)
        small, large = logits.split([self.smk_size * self.smk_size, self.kernel_size * self.kernel_size], dim=-1)
        values, out, halves = value_halves(value, self.num_groups)
        mixed_small = self._kernel_sum(small, values[0], self.smk_size, rpb_small)
        mixed_large = self._kernel_sum(large, values[1], self.kernel_size, rpb_large)
        halves[:, 0].copy_(mixed_small.permute(0, 1, 4, 2, 3))
        halves[:, 1].copy_(mixed_large.permute(0, 1, 4, 2, 3))
        return out


def query_projection(dim: int, in_dim: Optional[int] = None, **dd: Any) -> nn.Sequential:
    """1x1 conv + BN from the features (``in_dim`` channels, default ``dim``) to the query (``dim // 2``)."""
    return nn.Sequential(nn.Conv2d(in_dim or dim, dim // 2, 1, bias=False, **dd), nn.BatchNorm2d(dim // 2, **dd))


def key_projection(key_dim: int, dim: int, **dd: Any) -> nn.Sequential:
    """7x7 region pooling, then 1x1 conv + BN to the key (``dim // 2`` channels)."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(REGION_GRID),
        nn.Conv2d(key_dim, dim // 2, 1, bias=False, **dd),
        nn.BatchNorm2d(dim // 2, **dd),
    )


def conv_bn(in_dim: int, out_dim: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
            bias: bool = False, dilation: int = 1, **dd: Any) -> nn.Sequential:
    """Conv + BatchNorm (3x3 with stride 2: the downsampling layers)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
                  dilation=dilation, groups=groups, bias=bias, **dd),
        nn.BatchNorm2d(out_dim, **dd),
    )


def conv_ffn(dim: int, hidden: int, out_dim: int, dilation: int = 1, **dd: Any) -> list[nn.Module]:
    """ConvFFN layers: 1x1 conv, GELU, residual 3x3 depthwise conv, GRN, 1x1 conv."""
    return [
        nn.Conv2d(dim, hidden, 1, **dd),
        nn.GELU(),
        ResDWConv(hidden, 3, dilation=dilation, **dd),
        GRN(hidden, **dd),
        nn.Conv2d(hidden, out_dim, 1, **dd),
    ]


class ContMixBlock(nn.Module):
    """The plug-and-play ContMix block of the official ``contmix.py``: a ContMix token mixer (dynamic kernels from
    the block's own input) followed by a ConvFFN, on NCHW maps; the official parameter names.

    Args:
        dim: channels in and out.
        kernel_size: large dynamic kernel (and Dilated RepConv) size, odd, 5 to 19.
        smk_size: small dynamic kernel size.
        num_heads: kernel heads; doubled into groups (half small kernel, half large).
        mlp_ratio: hidden width of the ConvFFN.
        res_scale: scale the residual shortcut instead of the branch.
        ls_init_value: LayerScale init, or None for no LayerScale.
        drop_path: stochastic depth rate.
        norm_layer: normalisation before the mixer and the ConvFFN (channels -> module).
        deploy: build the Dilated RepConv already merged (see ``reparameterize``).
        backend: the ContMix kernel application's backend ('auto', 'reference', 'cpu', 'triton').
    """

    def __init__(
        self,
        dim: int = 64,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        mlp_ratio: float = 4,
        res_scale: bool = False,
        ls_init_value: Optional[float] = None,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = LayerNorm2d,
        deploy: bool = False,
        backend: str = "auto",
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        groups = num_heads * 2
        if dim % (2 * groups) != 0:
            raise ValueError(f"dim {dim} must be divisible by 2 * num_groups = {2 * groups}")
        self.kernel_size = kernel_size
        self.res_scale = res_scale
        self.scale = (dim // groups) ** -0.5
        self.dwconv1 = ResDWConv(dim, 3, **dd)
        self.norm1 = norm_layer(dim, **dd)
        self.weight_query = query_projection(dim, **dd)
        self.weight_key = key_projection(dim, dim, **dd)
        self.weight_value = conv_bn(dim, dim, **dd)
        self.weight_proj = nn.Conv2d(REGION_GRID**2, kernel_size**2 + smk_size**2, 1, **dd)
        self.fusion_proj = conv_bn(dim, dim, **dd)
        self.lepe = nn.Sequential(DilatedRepConv(dim, kernel_size, deploy=deploy, **dd), nn.BatchNorm2d(dim, **dd))
        self.se_layer = SEModule(dim, **dd)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False, **dd), nn.BatchNorm2d(dim, **dd), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim, **dd), nn.Conv2d(dim, dim, 1, **dd))
        self.dwconv2 = ResDWConv(dim, 3, **dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = nn.Sequential(*conv_ffn(dim, int(dim * mlp_ratio), dim, **dd))
        self.ls1 = LayerScale(dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale(dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.rpb1 = nn.Parameter(torch.empty(groups, 2 * smk_size - 1, 2 * smk_size - 1, **dd))
        self.rpb2 = nn.Parameter(torch.empty(groups, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
        nn.init.trunc_normal_(self.rpb1, std=0.02)
        nn.init.trunc_normal_(self.rpb2, std=0.02)
        self.contmix = ContMix(kernel_size, smk_size, groups, backend)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv1(x)
        identity = x
        x = self.norm1(x)
        gate = self.gate(x)
        lepe = self.lepe(x)
        context = resize_for_kernel(x, self.kernel_size)
        mixed = self.contmix(
            self.weight_value(context), self.weight_query(context) * self.scale, self.weight_key(context),
            self.weight_proj.weight, self.weight_proj.bias, self.rpb1, self.rpb2,
        )
        x = self.proj(gate * self.se_layer(self.fusion_proj(pool_to_size_of(mixed, identity)) + lepe))
        if self.res_scale:  # the LayerScales scale the shortcuts, not the branches
            x = self.ls1(identity) + self.drop_path(x)
            x = self.dwconv2(x)
            return self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))
        x = identity + self.drop_path(self.ls1(x))
        x = self.dwconv2(x)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge the Dilated RepConv branches (in place) for inference."""
        self.lepe[0].reparameterize()
