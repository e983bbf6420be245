"""The token mixers the paper compares in its Table 7, one module each, all mapping (B, C, H, W) to the same shape.

Every mixer is a spatial aggregation between an input and an output projection (1x1 convolutions, or the
projections of the attention modules taken from timm), so that the rows of the comparison differ only in how a
pixel gathers its neighbours:

- ``DyConvMixer``: dynamic convolution (Chen et al., CVPR 2020), depthwise: K candidate kernels mixed per image by a
  softmax attention on the pooled input.
- ``ODConvMixer``: omni-dimensional dynamic convolution (Li et al., ICLR 2022), depthwise: kernel-number, spatial
  and input-channel attentions (a depthwise kernel has no separate output-channel dimension).
- ``InvolutionMixer``: involution (Li et al., CVPR 2021): a K x K kernel generated at every pixel, shared by the
  channels of a group.
- ``OutlookerMixer``: VOLO's outlook attention (timm's ``OutlookAttention``).
- ``DCNv3Mixer``: deformable convolution v3 (InternImage), in pure PyTorch (``dcnv3_sample``, grid_sample based).
- ``ShiftedWindowMixer``: Swin's window attention (timm's ``WindowAttention``), shifted every other block.
- ``NeighbourhoodAttentionMixer``: neighbourhood attention (Hassani et al.) on the project's neighbourhood op.
- ``ContMixMixer``: ContMix (the paper's mixer) with the block's own features as its context.

``create_token_mixer`` builds one by name (``TOKEN_MIXERS``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, register_notrace_module
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse
from timm.models.volo import OutlookAttention
from torch import Tensor, nn

from ..layers import ContMix, conv_bn
from ..layers.contmix import REGION_GRID, key_projection, pool_to_size_of, query_projection, resize_for_kernel
from ..ops import check_backend_name, contmix_apply, neighbour_indices

__all__ = [
    "TOKEN_MIXERS",
    "ContMixMixer",
    "DCNv3Mixer",
    "DyConvMixer",
    "InvolutionMixer",
    "NeighbourhoodAttentionMixer",
    "ODConvMixer",
    "OutlookerMixer",
    "ShiftedWindowMixer",
    "create_token_mixer",
    "dcnv3_sample",
    "neighbourhood_logits",
    "shifted_window_mask",
]


def _pointwise(dim: int, **dd: Any) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, 1, **dd)


def _per_sample_depthwise(x: Tensor, weight: Tensor, kernel_size: int) -> Tensor:
    """Depthwise ``kernel_size`` x ``kernel_size`` convolution (zero-padded to the same size) of every sample with
    its own (B, C, k, k) kernels: one grouped convolution over the batch folded into the channels."""
    batch, channels, height, width = x.shape
    kernels = weight.reshape(batch * channels, 1, kernel_size, kernel_size)
    padding = kernel_size // 2
    out = F.conv2d(x.reshape(1, batch * channels, height, width), kernels, padding=padding, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


class DyConvMixer(nn.Module):
    """Projection, dynamic depthwise K x K convolution, projection.

    ``num_kernels`` candidate depthwise kernels (and biases) are mixed per image with the weights
    ``softmax(fc2(relu(fc1(avgpool(x)))) / temperature)`` (hidden width ``dim // 4``), as in DyConv.
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_kernels: int = 4, temperature: float = 1.0,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.temperature = temperature
        hidden = max(dim // 4, 4)
        self.proj_in = _pointwise(dim, **dd)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1, **dd), nn.ReLU(), nn.Conv2d(hidden, num_kernels, 1, **dd)
        )
        self.weight = nn.Parameter(torch.empty(num_kernels, dim, kernel_size, kernel_size, **dd))
        self.bias = nn.Parameter(torch.zeros(num_kernels, dim, **dd))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.proj_out = _pointwise(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        mix = torch.softmax(self.attention(x).flatten(1) / self.temperature, dim=1)  # (B, num_kernels)
        weight = torch.einsum("bn,nckl->bckl", mix, self.weight)
        bias = mix @ self.bias
        x = _per_sample_depthwise(x, weight, self.kernel_size) + bias[:, :, None, None]
        return self.proj_out(x)


class ODConvMixer(nn.Module):
    """Projection, omni-dimensional dynamic depthwise K x K convolution, projection.

    From the pooled input (a ``dim / 16`` wide, at least 16, bottleneck with BatchNorm), ODConv's attentions:
    a softmax over ``num_kernels`` candidate kernels, a sigmoid over the K x K positions, a sigmoid over the input
    channels (applied to the input). For a depthwise kernel the output-channel attention is the input-channel one,
    so it is left out, as ODConv's own implementation does.
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_kernels: int = 4, reduction: float = 1 / 16,
                 min_hidden: int = 16, temperature: float = 1.0, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = max(int(dim * reduction), min_hidden)
        self.kernel_size = kernel_size
        self.temperature = temperature
        self.proj_in = _pointwise(dim, **dd)
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1, bias=False, **dd), nn.BatchNorm2d(hidden, **dd),
            nn.ReLU(),
        )
        self.channel_fc = nn.Conv2d(hidden, dim, 1, **dd)
        self.spatial_fc = nn.Conv2d(hidden, kernel_size * kernel_size, 1, **dd)
        self.kernel_fc = nn.Conv2d(hidden, num_kernels, 1, **dd)
        self.weight = nn.Parameter(torch.empty(num_kernels, dim, kernel_size, kernel_size, **dd))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.proj_out = _pointwise(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        context = self.squeeze(x)
        channel = torch.sigmoid(self.channel_fc(context) / self.temperature)  # (B, C, 1, 1)
        spatial = torch.sigmoid(self.spatial_fc(context) / self.temperature).reshape(
            -1, 1, self.kernel_size, self.kernel_size)  # (B, 1, k, k)
        kernels = torch.softmax(self.kernel_fc(context).flatten(1) / self.temperature, dim=1)  # (B, num_kernels)
        weight = torch.einsum("bn,nckl->bckl", kernels, self.weight) * spatial
        return self.proj_out(_per_sample_depthwise(x * channel, weight, self.kernel_size))


class InvolutionMixer(nn.Module):
    """Projection, involution, projection.

    At every pixel a K x K kernel per group of ``group_channels`` channels is generated from that pixel's features
    (1x1 conv to ``dim // reduction``, BN, ReLU, 1x1 conv to ``groups * K^2``) and applied to its zero-padded
    K x K neighbourhood, as in involution.
    """

    def __init__(self, dim: int, kernel_size: int = 7, group_channels: int = 16, reduction: int = 4,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if dim % group_channels:
            raise ValueError(f"dim {dim} must be a multiple of group_channels {group_channels}")
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.groups = dim // group_channels
        self.proj_in = _pointwise(dim, **dd)
        self.kernel_gen = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, 1, bias=False, **dd), nn.BatchNorm2d(dim // reduction, **dd), nn.ReLU(),
            nn.Conv2d(dim // reduction, self.groups * kernel_size * kernel_size, 1, **dd),
        )
        self.proj_out = _pointwise(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        k = self.kernel_size
        kernels = self.kernel_gen(x).reshape(batch, self.groups, 1, k * k, height, width)
        patches = F.unfold(self.proj_in(x), k, padding=k // 2).reshape(
            batch, self.groups, channels // self.groups, k * k, height, width)
        return self.proj_out((kernels * patches).sum(3).reshape(batch, channels, height, width))


class OutlookerMixer(nn.Module):
    """VOLO's outlook attention (timm's ``OutlookAttention``: value projection, K^4 attention weights per head from
    the (stride-pooled) pixel, fold, output projection) on NCHW maps. ``stride`` 2 is VOLO's setting."""

    def __init__(self, dim: int, num_heads: int = 1, kernel_size: int = 7, stride: int = 2, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self.attn = OutlookAttention(dim, num_heads, kernel_size=kernel_size, padding=kernel_size // 2, stride=stride,
                                     device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def dcnv3_sample(value: Tensor, offset: Tensor, mask: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """DCNv3's core: every pixel sums its K x K sampling points, each moved by an offset and weighted by a mask.

    Args:
        value: (B, C, H, W) features, G groups of channels.
        offset: (B, H, W, G, K*K, 2) displacements (x, y) in pixels of the K*K points (row-major, the centre in
            the middle), from their places ``(w + (j - K//2) d, h + (i - K//2) d)``.
        mask: (B, H, W, G, K*K) weights of the points.
        kernel_size: odd K.
        dilation: spacing d of the points before their offsets.

    Returns:
        (B, C, H, W): ``sum_n mask[n] * bilinear(value, place_n + offset_n)``, zero outside the map (as a
        zero-padded convolution).
    """
    batch, channels, height, width = value.shape
    groups, points = mask.shape[-2], mask.shape[-1]
    steps = (torch.arange(kernel_size, device=value.device, dtype=offset.dtype) - kernel_size // 2) * dilation
    step_y, step_x = torch.meshgrid(steps, steps, indexing="ij")
    ys = torch.arange(height, device=value.device, dtype=offset.dtype)[:, None, None, None]
    xs = torch.arange(width, device=value.device, dtype=offset.dtype)[None, :, None, None]
    place_x = xs + step_x.reshape(-1) + offset[..., 0]  # (B, H, W, G, K*K)
    place_y = ys + step_y.reshape(-1) + offset[..., 1]
    # pixel centres to grid_sample's [-1, 1] coordinates (align_corners=False)
    grid = torch.stack(((2 * place_x + 1) / width - 1, (2 * place_y + 1) / height - 1), dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(batch * groups, height, width * points, 2)
    sampled = F.grid_sample(
        value.reshape(batch * groups, channels // groups, height, width), grid.to(value.dtype),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    ).reshape(batch, groups, channels // groups, height, width, points)
    weights = mask.permute(0, 3, 1, 2, 4).unsqueeze(2).to(value.dtype)  # (B, G, 1, H, W, K*K)
    return (sampled * weights).sum(-1).reshape(batch, channels, height, width)


class DCNv3Mixer(nn.Module):
    """InternImage's DCNv3 operator in pure PyTorch: input projection; offsets and softmax-normalised masks of the
    K x K points per group from a depthwise K x K conv + LayerNorm + GELU of the input; ``dcnv3_sample``; output
    projection. Offsets and masks start at zero (uniform masks, undeformed grid), as InternImage initialises them.
    """

    def __init__(self, dim: int, num_groups: int, kernel_size: int = 7, offset_scale: float = 1.0,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} must be a multiple of num_groups {num_groups}")
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.num_groups = num_groups
        self.offset_scale = offset_scale
        points = kernel_size * kernel_size
        self.proj_in = _pointwise(dim, **dd)
        self.dw_conv = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd), LayerNorm2d(dim, **dd),
            nn.GELU(),
        )
        self.offset = nn.Conv2d(dim, num_groups * points * 2, 1, **dd)
        self.mask = nn.Conv2d(dim, num_groups * points, 1, **dd)
        self.proj_out = _pointwise(dim, **dd)
        self.reset_sampling()

    @torch.no_grad()
    def reset_sampling(self) -> None:
        """Zero offsets and uniform masks: every point on its grid place, all weighted alike."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        points = self.kernel_size * self.kernel_size
        value = self.proj_in(x)
        guide = self.dw_conv(x)
        offset = self.offset(guide).permute(0, 2, 3, 1).reshape(batch, height, width, self.num_groups, points, 2)
        mask = self.mask(guide).permute(0, 2, 3, 1).reshape(batch, height, width, self.num_groups, points)
        out = dcnv3_sample(value, offset * self.offset_scale, mask.softmax(-1), self.kernel_size)
        return self.proj_out(out)


def _roll_regions(length: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Per position along a side rolled by ``-shift``: 0 before the last window, 1 in the last window's part that
    was there before the roll, 2 in the ``shift`` positions the roll brought round from the start."""
    index = torch.arange(length, device=device)
    return (index >= length - window).long() + (index >= length - shift).long()


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(num_windows, window^2, window^2) additive mask of Swin's shifted windows on a ``height`` x ``width`` map
    rolled by ``-shift``: 0 between tokens that were neighbours before the roll, -100 between tokens that only the
    cyclic roll put into one window (tokens of different regions, 3 x 3 of them, Swin's labelling)."""
    labels = 3 * _roll_regions(height, window, shift, device)[:, None] + _roll_regions(width, window, shift, device)
    windows = window_partition(labels[None, :, :, None], (window, window)).flatten(1)  # (nW, window^2)
    same = windows[:, :, None] == windows[:, None, :]
    return torch.zeros_like(same, dtype=torch.float32).masked_fill(~same, -100.0)


@register_notrace_module  # whether to shift depends on the map size: a leaf for fx tracing
class ShiftedWindowMixer(nn.Module):
    """Swin's (shifted) window attention: timm's ``WindowAttention`` (qkv, relative position bias, projection) on
    ``window`` x ``window`` windows, the map rolled by ``shift`` first (and back after) with Swin's mask.

    Maps whose sides are not multiples of the window are zero-padded at the bottom and right (as Swin's dense
    backbones do) and cropped back; a map that fits in one window is not shifted (as Swin does).
    """

    def __init__(self, dim: int, num_heads: int, window: int = 7, shift: int = 0, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self.window = window
        self.shift = shift
        self.attn = WindowAttention(dim, num_heads, window_size=window, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        w = self.window
        pad_h, pad_w = (-height) % w, (-width) % w
        x = F.pad(x, (0, pad_w, 0, pad_h)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        padded_h, padded_w = height + pad_h, width + pad_w
        shift = self.shift if max(padded_h, padded_w) > w else 0
        mask: Optional[Tensor] = None
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, w, shift, x.device).to(x.dtype)
        windows = window_partition(x, (w, w)).reshape(-1, w * w, channels)
        x = window_reverse(self.attn(windows, mask).reshape(-1, w, w, channels), (w, w), padded_h, padded_w)
        if shift:
            x = torch.roll(x, (shift, shift), dims=(1, 2))
        return x[:, :height, :width].permute(0, 3, 1, 2)


def neighbourhood_logits(query: Tensor, key: Tensor, kernel_size: int) -> Tensor:
    """``logits[..., i, j, a*K + b] = query[i, j] . key[neighbour (a, b) of (i, j)]`` for (B, G, H, W, c) maps,
    with the neighbourhoods of ``overlock.ops`` (K x K windows shifted inward at the borders). One shifted slice of
    the keys at a time, so no K^2-times copy of them is made."""
    height, width = key.shape[2], key.shape[3]
    rows = neighbour_indices(height, kernel_size, key.device)
    cols = neighbour_indices(width, kernel_size, key.device)
    logits = []
    for a in range(kernel_size):
        key_rows = key.index_select(2, rows[:, a])
        for b in range(kernel_size):
            logits.append((query * key_rows.index_select(3, cols[:, b])).sum(-1))
    return torch.stack(logits, dim=-1)


@register_notrace_module  # shape-dependent (the neighbourhood op): a leaf for fx tracing
class NeighbourhoodAttentionMixer(nn.Module):
    """Neighbourhood attention: qkv projection; each pixel attends, with a relative position bias, to the K x K
    window around it (shifted inward at the borders: NATTEN's semantics, the project's ``contmix_apply``); output
    projection. Maps smaller than K are resized up for the attention and pooled back, as ContMix does."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, backend: str = "auto", device: Any = None,
                 dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.backend = check_backend_name(backend)
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Conv2d(dim, dim * 3, 1, **dd)
        self.rpb = nn.Parameter(torch.empty(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = _pointwise(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        resized = resize_for_kernel(x, self.kernel_size)
        batch, channels, height, width = resized.shape
        qkv = self.qkv(resized).reshape(batch, 3, self.num_heads, channels // self.num_heads, height, width)
        query, key, value = qkv.permute(1, 0, 2, 4, 5, 3).unbind(0)  # each (B, G, H, W, c)
        logits = neighbourhood_logits(query * self.scale, key, self.kernel_size)
        out = contmix_apply(logits, value, self.kernel_size, self.rpb, self.backend)
        out = out.permute(0, 1, 4, 2, 3).reshape(batch, channels, height, width)
        return self.proj(pool_to_size_of(out, x))


class ContMixMixer(nn.Module):
    """ContMix as a stand-alone token mixer: the query from every pixel, the keys from the 7 x 7 region centres of
    the *same* features (this network has no Overview-Net to give a context prior), their affinities projected
    into a ``smk_size`` and a ``kernel_size`` dynamic kernel per group (the official ContMix's two kernel sizes, half
    the value channels each), applied by the project's ContMix layer; then an output projection. Maps smaller than
    the kernel are resized up and pooled back, as in the official code.
    """

    def __init__(self, dim: int, num_groups: int, kernel_size: int = 7, smk_size: int = 5, backend: str = "auto",
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if dim % (2 * num_groups):
            raise ValueError(f"dim {dim} must be divisible by 2 * num_groups = {2 * num_groups}")
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.scale = (dim // num_groups) ** -0.5  # the official ContMix block's scale for its groups
        self.weight_query = query_projection(dim, **dd)
        self.weight_key = key_projection(dim, dim, **dd)
        self.weight_value = conv_bn(dim, dim, **dd)
        self.weight_proj = nn.Conv2d(REGION_GRID**2, kernel_size**2 + smk_size**2, 1, **dd)
        self.rpb1 = nn.Parameter(torch.empty(num_groups, 2 * smk_size - 1, 2 * smk_size - 1, **dd))
        self.rpb2 = nn.Parameter(torch.empty(num_groups, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
        nn.init.trunc_normal_(self.rpb1, std=0.02)
        nn.init.trunc_normal_(self.rpb2, std=0.02)
        self.contmix = ContMix(kernel_size, smk_size, num_groups, backend)
        self.proj = _pointwise(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        context = resize_for_kernel(x, self.kernel_size)
        mixed = self.contmix(
            self.weight_value(context), self.weight_query(context) * self.scale, self.weight_key(context),
            self.weight_proj.weight, self.weight_proj.bias, self.rpb1, self.rpb2,
        )
        return self.proj(pool_to_size_of(mixed, x))


def _head_groups(dim: int, head_dim: int = 32) -> int:
    return max(dim // head_dim, 1)


# name -> builder(dim, kernel_size, block_index, device=, dtype=): the Table 7 rows' mixers with this project's
# settings
TOKEN_MIXERS: dict[str, Callable[..., nn.Module]] = {
    "dyconv": lambda dim, k, i, **dd: DyConvMixer(dim, k, **dd),
    "odconv": lambda dim, k, i, **dd: ODConvMixer(dim, k, **dd),
    "involution": lambda dim, k, i, **dd: InvolutionMixer(dim, k, **dd),
    "outlooker": lambda dim, k, i, **dd: OutlookerMixer(dim, 1, k, **dd),
    "dcnv3": lambda dim, k, i, **dd: DCNv3Mixer(dim, dim // 16, k, **dd),
    "swin": lambda dim, k, i, **dd: ShiftedWindowMixer(dim, _head_groups(dim), k, shift=(k // 2) * (i % 2), **dd),
    "na": lambda dim, k, i, **dd: NeighbourhoodAttentionMixer(dim, _head_groups(dim), k, **dd),
    "contmix": lambda dim, k, i, **dd: ContMixMixer(dim, _head_groups(dim), k, **dd),
}


def create_token_mixer(name: str, dim: int, kernel_size: int = 7, block_index: int = 0, device: Any = None,
                       dtype: Any = None) -> nn.Module:
    """The mixer ``name`` (a key of ``TOKEN_MIXERS``) for ``dim`` channels; ``block_index`` within its stage (Swin
    shifts the windows of odd blocks); ``device`` and ``dtype`` of its parameters."""
    if name not in TOKEN_MIXERS:
        raise ValueError(f"unknown token mixer {name!r}; choose from {', '.join(TOKEN_MIXERS)}")
    return TOKEN_MIXERS[name](dim, kernel_size, block_index, device=device, dtype=dtype)
