"""Memory layout of (B, G, H, W, C) ContMix tensors: planar (NCHW-derived) or channels-last.

Backends return outputs and value gradients in the caller's layout, so a model that keeps its maps
NCHW or NHWC never pays for a transpose around the kernel application.
"""
from __future__ import annotations

import torch
from torch import Tensor


def is_planar(x: Tensor) -> bool:
    """True when the channels of a (B, G, H, W, C) tensor lie outside the width (an NCHW-derived view)."""
    return x.stride(4) > x.stride(3)


def empty_like_layout(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Uninitialised dense (B, G, H, W, C) tensor, planar or channels-last as ``like`` is."""
    b, g, h, w, c = like.shape
    dtype = like.dtype if dtype is None else dtype
    if is_planar(like):
        return torch.empty(b, g, c, h, w, dtype=dtype, device=like.device).permute(0, 1, 3, 4, 2)
    return torch.empty(b, g, h, w, c, dtype=dtype, device=like.device)


def in_layout_of(x: Tensor, like: Tensor) -> Tensor:
    """``x`` with the strides ``empty_like_layout(like)`` would have, copied only if it has others."""
    target = empty_like_layout(like, x.dtype)
    if x.stride() == target.stride():
        return x
    return target.copy_(x)
