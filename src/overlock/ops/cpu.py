"""CPU kernels of the neighbourhood weighted sum: a row of queries at a time as a banded matmul.

All queries of map row ``i`` share the same window rows ``s_i .. s_i + K - 1``, and those K rows of a
(H*W, C) value matrix are one contiguous block of ``K * W`` rows: a view, never a copy. Scattering the
row's K*K weights per query into a dense (W, K*W) matrix (zero outside each query's window) turns the
row into one batched matmul over the B*G maps::

    out[i]       = D_i @ V[s_i*W : (s_i+K)*W]                     (W, K*W) @ (K*W, C)
    grad_D_i     = grad_out[i] @ V[block].T   -> grad_attn[i]      read back at the band positions
    grad_V[block] += D_i.T @ grad_out[i]

The band positions depend only on the column, so the band buffer is zeroed once per call and only its
band is rewritten (through three strided views: left border, interior, right border). On small maps the
rows that share a window start (the border rows: K//2 + 1 of them at each end of the map) go through one
matmul together, from a buffer of K//2 + 1 rows filled by three copies, so a 14x14 map with K = 13 takes
2 matmuls, not 14. Memory stays bounded by that buffer (at most the size of the weights) and one copy of
the inputs; the matmuls do W/K times the arithmetic of a direct sum, which BLAS more than pays back
against K^2 passes over memory (see ``benchmarks/contmix_kernel.py``). Half-precision inputs are computed
in float32.

For inference, ``softmax_av_forward`` starts one step earlier, from the logits' factors ``query @ key`` and
the bias: a block of images and rows at a time, the logits, their softmax, the band
and the matmuls all stay in a core's cache, so the kernel weights are never written to memory and read
back (in the unfused order: up to four passes over a tensor K^2 times the size of a value group).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layout import empty_like_layout, is_planar
from .geometry import window_starts

# band buffer of one block of ``softmax_av_forward`` (floats; 4 MiB in float32, about half of it per core when
# two threads split the block's matmuls): the block's logits and weights (K/W of it) and its band stay in cache
# between the steps, and small maps take few, large steps
BAND_PER_BLOCK = 1 << 20


def _as_matrices(x: Tensor) -> Tensor:
    """(B, G, H, W, C) as (B*G, H*W, C) with rows or channels unit-stride; copies only when no such view exists."""
    b, g, h, w, c = x.shape
    if is_planar(x):
        return x.permute(0, 1, 4, 2, 3).contiguous().view(b * g, c, h * w).transpose(1, 2)
    return x.contiguous().view(b * g, h * w, c)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _band_views(matrix: Tensor, width: int, kernel_size: int) -> list[tuple[Tensor, slice]]:
    """Views (N, R, cols, K, K) of a (N, R, W, K*W) buffer at ``[r, j, a*W + s_j + b]``, with their query columns.

    ``s_j`` is 0 on the left border, ``j - K//2`` inside and ``W - K`` on the right border, so each of the
    three column ranges is a plain strided view of the buffer.
    """
    k, half = kernel_size, kernel_size // 2
    row = k * width  # elements of one query's row in the buffer
    flat, per_map_row = matrix.stride(0), matrix.stride(1)
    regions = (
        (slice(0, half), (row, width, 1), 0),
        (slice(half, width - half), (row + 1, width, 1), half * row),
        (slice(width - half, width), (row, width, 1), (width - half) * row + width - k),
    )
    views = []
    for cols, strides, offset in regions:
        count = cols.stop - cols.start
        if count > 0:
            shape = (matrix.shape[0], matrix.shape[1], count, k, k)
            view = matrix.as_strided(shape, (flat, per_map_row, *strides), matrix.storage_offset() + offset)
            views.append((view, cols))
    return views


def _row_chunks(height: int, width: int, kernel_size: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Chunks ``(first, stop, runs)`` of map rows; ``runs`` are ``(first, stop, window start)`` of rows sharing a start.

    Small maps (H <= 2K), where most rows are border rows sharing a window start, go K//2 + 1 rows at a time
    when that buffer is no larger than the weights; other maps one row at a time (a cache-sized buffer).
    """
    chunk = kernel_size // 2 + 1
    if height > 2 * kernel_size or chunk * width > height * kernel_size:
        chunk = 1
    starts = window_starts(height, kernel_size).tolist()
    bounds = [(first, min(first + chunk, height)) for first in range(0, height, chunk)]
    return [(first, stop, _runs(starts, first, stop)) for first, stop in bounds]


def _runs(starts: list[int], first: int, stop: int) -> list[tuple[int, int, int]]:
    """``(first, stop, window start)`` of the runs of rows ``first:stop`` that share a window start."""
    runs: list[tuple[int, int, int]] = []
    for i in range(first, stop):
        if runs and runs[-1][2] == starts[i]:
            runs[-1] = (runs[-1][0], i + 1, starts[i])
        else:
            runs.append((i, i + 1, starts[i]))
    return runs


def _fill_band(views: list[tuple[Tensor, slice]], weights: Tensor, first: int, stop: int) -> None:
    """Write the weights of map rows ``first:stop`` (N, H, W, K, K) into the band buffer's leading rows."""
    rows = stop - first
    for view, cols in views:
        (view if view.shape[1] == rows else view[:, :rows]).copy_(weights[:, first:stop, cols])


def _band_rows(band: Tensor, first: int, count: int) -> Tensor:
    """Rows ``first : first + count`` of the (N, R, W, K*W) band buffer as (N, count*W, K*W) matrices."""
    if first == 0 and count == band.shape[1]:
        return band.view(band.shape[0], -1, band.shape[-1])
    return band[:, first : first + count].reshape(band.shape[0], -1, band.shape[-1])


def _multiply_runs(band: Tensor, first: int, runs: list[tuple[int, int, int]], values: Tensor, out_rows: Tensor,
                   width: int, kernel_size: int) -> None:
    """``out_rows`` of each run of rows = its band rows (the buffer holds rows from ``first``) @ its K value rows."""
    for run_first, run_stop, start in runs:
        rows = _band_rows(band, run_first - first, run_stop - run_first)
        block = values[:, start * width : (start + kernel_size) * width]
        # into a fresh matrix, then copied: a strided out= makes the matmul 5-20 % slower
        out_rows[:, run_first * width : run_stop * width].copy_(torch.bmm(rows, block))


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
    chunks = _row_chunks(h, w, k)
    band = weights.new_zeros(b * g, chunks[0][1], w, k * w)
    views = _band_views(band, w, k)
    for first, stop, runs in chunks:
        _fill_band(views, weights, first, stop)
        _multiply_runs(band, first, runs, values, out_rows, w, k)
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
    chunks = _row_chunks(h, w, k)
    band = weights.new_zeros(b * g, chunks[0][1], w, k * w)
    grad_buffer = torch.empty_like(band).view(-1)  # holds each run's (N, rows*W, K*W) product, contiguous
    # (N, K*W, C) product laid out like ``grad_value_rows``, so adding it in is a unit-stride pass
    if is_planar(value):
        grad_block = weights.new_empty(b * g, c, k * w).transpose(1, 2)
    else:
        grad_block = weights.new_empty(b * g, k * w, c)
    views = _band_views(band, w, k)
    grad_views: dict[int, tuple[Tensor, list[tuple[Tensor, slice]]]] = {}  # by run length: product, its band
    for first, stop, runs in chunks:
        _fill_band(views, weights, first, stop)
        for run_first, run_stop, start in runs:
            count = run_stop - run_first
            if count not in grad_views:
                product = grad_buffer[: b * g * count * w * k * w].view(b * g, count, w, k * w)
                grad_views[count] = product.view(b * g, -1, k * w), _band_views(product, w, k)
            product, band_of_product = grad_views[count]
            query_rows, block = slice(run_first * w, run_stop * w), slice(start * w, (start + k) * w)
            grad_out_rows = grads[:, query_rows]
            torch.bmm(grad_out_rows, values[:, block].transpose(1, 2), out=product)
            for view, cols in band_of_product:  # only the band of the product is a gradient
                grad_attn[:, run_first:run_stop, cols] = view
            rows = _band_rows(band, run_first - first, run_stop - run_first)
            torch.bmm(rows.transpose(1, 2), grad_out_rows, out=grad_block)
            grad_value_rows[:, block] += grad_block  # an in-place baddbmm on this strided view runs matrix by matrix
    return grad_attn.view(attn.shape).to(attn.dtype), grad_value.to(value.dtype)


def _block_shape(batch: int, groups: int, height: int, width: int, kernel_size: int) -> tuple[int, int]:
    """Images and map rows of a ``softmax_av_forward`` block: whole maps of as many images as keep the band
    buffer within ``BAND_PER_BLOCK``; on larger maps, as many rows (at least one) of all the images, so that
    the number of steps stays that of the unfused kernel's."""
    row_band = groups * width * kernel_size * width
    if height * row_band <= BAND_PER_BLOCK:
        return max(1, min(batch, BAND_PER_BLOCK // (height * row_band))), height
    return batch, max(1, min(height, BAND_PER_BLOCK // (batch * row_band)))


def softmax_av_forward(query: Tensor, key: Tensor, bias: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """``av_forward(softmax(query @ key + bias), value)`` computed a cache-sized block at a time (inference only).

    query (B, G, H*W, c) and key (B, G, c, K*K) are the logits' factors, bias (G or 1, H*W, K*K), value
    (B, G, H, W, C); one dtype, float32 or float64. Returns (B, G, H, W, C) in the channel layout of ``value``.
    """
    b, g, h, w, c = value.shape
    k = kernel_size
    values = _as_matrices(value)
    out = empty_like_layout(value)
    out_rows = _as_matrices(out)
    starts = window_starts(h, k).tolist()
    images, rows = _block_shape(b, g, h, w, k)
    band = value.new_zeros(images * g, rows, w, k * w)
    for first_image in range(0, b, images):
        batch = slice(first_image, min(first_image + images, b))
        maps = slice(batch.start * g, batch.stop * g)
        maps_band = band[: maps.stop - maps.start]
        views = _band_views(maps_band, w, k)
        for top in range(0, h, rows):
            bottom = min(top + rows, h)
            queries = slice(top * w, bottom * w)
            block_logits = torch.matmul(query[batch, :, queries], key[batch])  # (images, G, rows*W, K*K)
            block_logits += bias[:, queries]
            weights = torch.softmax(block_logits, dim=-1).view(-1, bottom - top, w, k, k)
            _fill_band(views, weights, 0, bottom - top)
            _multiply_runs(maps_band, top, _runs(starts, top, bottom), values[maps], out_rows[maps], w, k)
    return out
