"""CPU kernels of the neighbourhood weighted sum: one row of queries at a time as a banded matmul.

All queries of map row ``i`` share the same window rows ``s_i .. s_i + K - 1``, and those K rows of a
(H*W, C) value matrix are one contiguous block of ``K * W`` rows: a view, never a copy. Scattering the
row's K*K weights per query into a dense (W, K*W) matrix (zero outside each query's window) turns the
row into one batched matmul over the B*G maps::

    out[i]       = D_i @ V[s_i*W : (s_i+K)*W]                     (W, K*W) @ (K*W, C)
    grad_D_i     = grad_out[i] @ V[block].T   -> grad_attn[i]      read back at the band positions
    grad_V[block] += D_i.T @ grad_out[i]

The band positions depend only on the column, so the (W, K*W) buffer is zeroed once per call and only
its band is rewritten for each row (through three strided views: left border, interior, right border).
Memory stays bounded by that buffer (B*G*W*K*W elements) and one copy of the inputs; the matmuls do
W/K times the arithmetic of a direct sum, which BLAS more than pays back against K^2 passes over
memory (see ``benchmarks/contmix_kernel.py``). Half-precision inputs are computed in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layout import empty_like_layout, is_planar
from .reference import window_starts


def _as_matrices(x: Tensor) -> Tensor:
    """(B, G, H, W, C) as (B*G, H*W, C) with rows or channels unit-stride; copies only when no such view exists."""
    b, g, h, w, c = x.shape
    if is_planar(x):
        return x.permute(0, 1, 4, 2, 3).contiguous().view(b * g, c, h * w).transpose(1, 2)
    return x.contiguous().view(b * g, h * w, c)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _band_views(matrix: Tensor, width: int, kernel_size: int) -> list[tuple[Tensor, slice]]:
    """Views (N, cols, K, K) of a (N, W, K*W) buffer at ``[j, a*W + s_j + b]``, with their query columns.

    ``s_j`` is 0 on the left border, ``j - K//2`` inside and ``W - K`` on the right border, so each of the
    three column ranges is a plain strided view of the buffer.
    """
    k, half = kernel_size, kernel_size // 2
    row = k * width  # elements of one query's row in the buffer
    flat = matrix.stride(0)
    regions = (
        (slice(0, half), (row, width, 1), 0),
        (slice(half, width - half), (row + 1, width, 1), half * row),
        (slice(width - half, width), (row, width, 1), (width - half) * row + width - k),
    )
    views = []
    for cols, strides, offset in regions:
        count = cols.stop - cols.start
        if count > 0:
            view = matrix.as_strided((matrix.shape[0], count, k, k), (flat, *strides), matrix.storage_offset() + offset)
            views.append((view, cols))
    return views


def av_forward(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """``out[q] = sum_n attn[q, n] * value[neighbour n of q]`` for (B, G, H, W, K*K) / (B, G, H, W, C) inputs.

    Returns (B, G, H, W, C) in the dtype and channel layout of ``value``.
    """
    b, g, h, w, c = value.shape
    k = kernel_size
    dtype = _compute_dtype(value.dtype)
    values = _as_matrices(value.to(dtype))
    weights = attn.to(dtype).reshape(b * g, h, w, k, k)
    out = empty_like_layout(value, dtype)
    out_rows = _as_matrices(out)  # a view: ``out`` is dense in its own layout
    band = weights.new_zeros(b * g, w, k * w)
    views = _band_views(band, w, k)
    for i, start in enumerate(window_starts(h, k).tolist()):
        for view, cols in views:
            view.copy_(weights[:, i, cols])
        torch.bmm(band, values[:, start * w : (start + k) * w], out=out_rows[:, i * w : (i + 1) * w])
    return out.to(value.dtype)


def av_backward(grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Gradients (grad_attn, grad_value) of ``av_forward``, in the dtypes of ``attn`` and ``value``.

    grad_attn is contiguous; grad_value has the channel layout of ``value``.
    """
    b, g, h, w, c = value.shape
    k = kernel_size
    dtype = _compute_dtype(value.dtype)
    values = _as_matrices(value.to(dtype))
    grads = _as_matrices(grad_out.to(dtype))
    weights = attn.to(dtype).reshape(b * g, h, w, k, k)
    grad_attn = weights.new_empty(b * g, h, w, k, k)
    grad_value = empty_like_layout(value, dtype).zero_()
    grad_value_rows = _as_matrices(grad_value)
    band = weights.new_zeros(b * g, w, k * w)
    grad_band = torch.empty_like(band)  # only its band is read, and every entry is written by the matmul
    # (B*G, K*W, C) product laid out like ``grad_value_rows``, so adding it in is a unit-stride pass
    if is_planar(value):
        grad_block = weights.new_empty(b * g, c, k * w).transpose(1, 2)
    else:
        grad_block = weights.new_empty(b * g, k * w, c)
    views = _band_views(band, w, k)
    grad_views = _band_views(grad_band, w, k)
    for i, start in enumerate(window_starts(h, k).tolist()):
        rows, block = slice(i * w, (i + 1) * w), slice(start * w, (start + k) * w)
        for view, cols in views:
            view.copy_(weights[:, i, cols])
        torch.bmm(grads[:, rows], values[:, block].transpose(1, 2), out=grad_band)
        for view, cols in grad_views:
            grad_attn[:, i, cols] = view
        torch.bmm(band.transpose(1, 2), grads[:, rows], out=grad_block)
        grad_value_rows[:, block] += grad_block  # an in-place baddbmm on this strided view runs matrix by matrix
    return grad_attn.view(attn.shape).to(attn.dtype), grad_value.to(value.dtype)
