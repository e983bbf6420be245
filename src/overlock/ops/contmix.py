"""Public entry point of the ContMix kernel application.

``contmix_apply`` is the only function callers need: relative position bias and softmax in plain PyTorch, then
the neighbourhood weighted sum as the custom op ``overlock::neighbourhood_av`` run by the backend the caller
names (see ``backends``). It is scriptable, traceable and exportable as it is. ``softmax=False`` (an ablation)
applies the biased logits as they are, through the same op.

Dilation d (NATTEN's definition, see ``geometry``) splits the map into d x d interleaved sub-grids, the
positions ``(p + d i, q + d j)``, and applies the undilated kernels within each: each sub-grid goes through the
same op as an undilated map, so every backend runs dilated kernels unchanged.

Dtypes: the weighted sum runs in the promoted dtype of logits and value (the CPU backend computes half
precision in float32), the softmax of half-precision logits in float32, and the output has the dtype of
``value``. Under autocast the custom op keeps the dtypes it is given.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import AUTO
from .geometry import relative_position_bias
from .layout import empty_like_layout
from .shapes import check_kernel_inputs, check_rpb

__all__ = ["contmix_apply"]


def contmix_apply(
    logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor | None = None, backend: str = AUTO,
    dilation: int = 1, softmax: bool = True,
) -> Tensor:
    """Apply per-pixel dynamic kernels to ``value`` with neighbourhood semantics.

    Args:
        logits: (B, G, H, W, K*K) kernel logits, before the softmax.
        value: (B, G, H, W, C) features, G groups of C channels.
        kernel_size: odd K, at most min(H, W) / dilation.
        rpb: optional (G, 2K-1, 2K-1) relative position bias added to the logits.
        backend: 'auto' or a name from ``available_backends()`` ('reference', 'cpu', 'triton').
        dilation: spacing of a window's neighbours (NATTEN's dilation: undilated windows on each of the
            dilation x dilation interleaved sub-grids).
        softmax: normalise the kernels; ``False`` weights the neighbours by ``logits + bias`` unnormalised.

    Returns:
        (B, G, H, W, C): ``sum_n softmax(logits + bias)[.., n] * value[neighbour n]`` (without the softmax when
        ``softmax`` is False), in the dtype of ``value`` and its channel layout (planar for NCHW-derived views,
        else channels-last).
    """
    check_kernel_inputs(logits, value, kernel_size, dilation=dilation)
    check_rpb(rpb, value.shape[1], kernel_size)
    if dilation == 1:
        return _apply(logits, value, kernel_size, rpb, backend, softmax)
    out = empty_like_layout(value)
    for p in range(dilation):
        for q in range(dilation):
            sub_logits = logits[:, :, p::dilation, q::dilation]
            sub_value = value[:, :, p::dilation, q::dilation]
            out[:, :, p::dilation, q::dilation] = _apply(sub_logits, sub_value, kernel_size, rpb, backend, softmax)
    return out


def _apply(logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor | None, backend: str, softmax: bool) -> Tensor:
    """The undilated kernel application: bias, softmax (unless ``softmax`` is False), then the custom op."""
    if rpb is not None:
        logits = logits + relative_position_bias(rpb, value.shape[2], value.shape[3], kernel_size).to(logits.dtype)
    dtype = torch.promote_types(logits.dtype, value.dtype)
    if not softmax:
        attn = logits
    elif logits.dtype == torch.float16 or logits.dtype == torch.bfloat16:
        attn = torch.softmax(logits, dim=-1, dtype=torch.float32)
    else:
        attn = torch.softmax(logits, dim=-1)
    out = torch.ops.overlock.neighbourhood_av(attn.to(dtype), value.to(dtype), kernel_size, backend)
    return out.to(value.dtype)
