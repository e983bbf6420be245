"""Triton kernels for the neighbourhood weighted sum (NATTEN ``na2d_av`` semantics), forward and backward.

Shapes: ``attn`` (B, G, H, W, K*K), ``value`` (B, G, H, W, C). The K x K window of query (i, j) starts
at ``(clamp(i - K//2, 0, H - K), clamp(j - K//2, 0, W - K))``: shifted inward at the borders, never
padded. Every kernel is memory-bandwidth bound, so each one streams its large inputs about once:

* forward: one program per (batch, group, 2-D tile of queries) holds an fp32 accumulator of
  (queries, channels) and loops over the K*K neighbours; each step loads one weight per query and
  one channel vector per query. Neighbouring queries share most of their windows, so the repeated
  ``value`` reads are served by the caches; each ``attn`` row is read once, a cache line serving
  consecutive neighbours.
* grad_attn: same grid; the query tile's ``grad_out`` rows stay in registers and each neighbour
  costs one ``value`` load and a reduction over the channels.
* grad_value: one program per (batch, group, 2-D tile of keys) gathers from the queries whose
  clamped window holds its key. Along each axis these queries form one contiguous range
  (window starts never decrease with the query index), computed in closed form, so no
  atomics and no membership tests over a padded range are needed.

All kernels take arbitrary element strides, accumulate in fp32 and write in the output's dtype.
Importing this module imports triton (about 0.2 s) when it is installed; ``TRITON_INTERPRET=1`` (Triton's
CPU interpreter, for tests without a GPU) must be set before that import, because Triton fixes the mode
when the kernels are decorated.
"""
from __future__ import annotations  # keeps the kernels' ``tl.constexpr`` annotations lazy when triton is absent

import os

import torch
from torch import Tensor

from .shapes import check_kernel_inputs

try:
    import triton
    import triton.language as tl

    _jit = triton.jit
    # Triton decides when a kernel is decorated whether it runs compiled or in its CPU interpreter.
    _INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")
except Exception:  # missing or broken install (ImportError, RuntimeError, OSError, ...): kernels never launched
    triton = None
    _INTERPRETED = False

    def _jit(fn):
        return fn


__all__ = ["av_backward", "av_forward", "triton_available"]

# Offsets inside one (batch, group) slice are computed in int32 (the slice base is int64).
_MAX_SLICE_SPAN = 2**31 - 1
# Elements (queries x padded channels) one program keeps in flight; 4096 fp32 = 32 registers a thread at 4 warps.
_TILE_ELEMENTS = 4096
_MIN_TILE_QUERIES, _MAX_TILE_QUERIES = 16, 256
# Below this many programs a launch cannot keep a large GPU busy, so tiles are shrunk (to 32 queries at least).
_TARGET_PROGRAMS = 1024
_MIN_SHRUNK_QUERIES = 32


def triton_available(value: Tensor) -> bool:
    """True when these kernels can run on ``value``: a CUDA tensor, or a CPU tensor under ``TRITON_INTERPRET=1``.

    Never raises. The interpreter setting counts as it was when this module was imported (Triton fixes
    it when the kernels are decorated), so set ``TRITON_INTERPRET`` before importing it.
    """
    try:
        if triton is None:
            return False
        if value.device.type == "cuda":
            return True
        return value.device.type == "cpu" and _INTERPRETED
    except Exception:
        return False


@_jit
def _window_start(pos, length, K: tl.constexpr):
    """First neighbour of the (clamped) window of every query position on an axis of ``length``."""
    return tl.minimum(tl.maximum(pos - K // 2, 0), length - K)


@_jit
def _program_tile(groups, height, width, tiles_w, tiles_per_map, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """This program's batch and group (int64), and the row, column and in-map mask of its TILE_H x TILE_W
    positions: programs run over (batch, group, tile), the tiles of a map in row-major order."""
    pid = tl.program_id(0)
    bg = pid // tiles_per_map
    tile = pid % tiles_per_map
    offs = tl.arange(0, TILE_H * TILE_W)
    row = (tile // tiles_w) * TILE_H + offs // TILE_W
    col = (tile % tiles_w) * TILE_W + offs % TILE_W
    return (bg // groups).to(tl.int64), (bg % groups).to(tl.int64), row, col, (row < height) & (col < width)


@_jit
def _query_windows(i, j, q_mask, height, width, channels, K: tl.constexpr, BLOCK_C: tl.constexpr):
    """Window start row and column of each query, the channel offsets, and the (query, channel) mask."""
    c = tl.arange(0, BLOCK_C)
    mask = q_mask[:, None] & (c < channels)[None, :]
    return _window_start(i, height, K), _window_start(j, width, K), c, mask


@_jit
def _forward_kernel(
    attn_ptr, value_ptr, out_ptr,
    groups, height, width, channels, tiles_w, tiles_per_map,
    sa_b, sa_g, sa_h, sa_w, sa_n,
    sv_b, sv_g, sv_h, sv_w, sv_c,
    so_b, so_g, so_h, so_w, so_c,
    K: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[q, :] = sum_n attn[q, n] * value[neighbour n of q, :] for one tile of queries."""
    b, g, i, j, q_mask = _program_tile(groups, height, width, tiles_w, tiles_per_map, TILE_H, TILE_W)
    si, sj, c, mask = _query_windows(i, j, q_mask, height, width, channels, K, BLOCK_C)

    # windows are clamped into the map, so only the tile's padding (q_mask) and channels need masking
    attn_q = attn_ptr + b * sa_b + g * sa_g + i * sa_h + j * sa_w  # weight of neighbour n, advanced along n
    window = value_ptr + b * sv_b + g * sv_g + si * sv_h + sj * sv_w  # top-left neighbour of each window
    c_offs = (c * sv_c)[None, :]
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_C], dtype=tl.float32)
    for a in range(K):
        neighbour = window + a * sv_h
        for bb in range(K):
            weight = tl.load(attn_q, mask=q_mask, other=0.0).to(tl.float32)
            vals = tl.load(neighbour[:, None] + c_offs, mask=mask, other=0.0).to(tl.float32)
            acc += weight[:, None] * vals
            attn_q += sa_n
            neighbour += sv_w

    out = out_ptr + b * so_b + g * so_g + (i * so_h + j * so_w)[:, None] + c[None, :] * so_c
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@_jit
def _grad_attn_kernel(
    grad_out_ptr, value_ptr, grad_attn_ptr,
    groups, height, width, channels, tiles_w, tiles_per_map,
    sd_b, sd_g, sd_h, sd_w, sd_c,
    sv_b, sv_g, sv_h, sv_w, sv_c,
    sa_b, sa_g, sa_h, sa_w, sa_n,
    K: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_attn[q, n] = <grad_out[q, :], value[neighbour n of q, :]> for one tile of queries."""
    b, g, i, j, q_mask = _program_tile(groups, height, width, tiles_w, tiles_per_map, TILE_H, TILE_W)
    si, sj, c, mask = _query_windows(i, j, q_mask, height, width, channels, K, BLOCK_C)

    grad_out = grad_out_ptr + b * sd_b + g * sd_g + (i * sd_h + j * sd_w)[:, None] + c[None, :] * sd_c
    go = tl.load(grad_out, mask=mask, other=0.0).to(tl.float32)
    window = value_ptr + b * sv_b + g * sv_g + si * sv_h + sj * sv_w  # top-left neighbour of each window
    c_offs = (c * sv_c)[None, :]
    grad_attn_q = grad_attn_ptr + b * sa_b + g * sa_g + i * sa_h + j * sa_w  # advanced along n
    for a in range(K):
        neighbour = window + a * sv_h
        for bb in range(K):
            vals = tl.load(neighbour[:, None] + c_offs, mask=mask, other=0.0).to(tl.float32)
            dot = tl.sum(go * vals, axis=1)
            tl.store(grad_attn_q, dot.to(grad_attn_ptr.dtype.element_ty), mask=q_mask)
            grad_attn_q += sa_n
            neighbour += sv_w


@_jit
def _query_range(pos, length, K: tl.constexpr):
    """First query and number of queries on an axis whose clamped window holds key position ``pos``.

    A window starting at s covers [s, s + K - 1] and s = clamp(q - K//2, 0, length - K) never decreases
    with q, so the queries form one range: it starts at 0 if pos < K (the first window already holds
    it), else at pos - K//2; it ends at length - 1 if pos >= length - K (the last window holds it),
    else at pos + K//2. Interior keys get exactly K queries, keys near a border up to K + K//2.
    """
    first = tl.where(pos < K, 0, pos - K // 2)
    last = tl.where(pos >= length - K, length - 1, pos + K // 2)
    return first, last - first + 1


@_jit
def _grad_value_kernel(
    grad_out_ptr, attn_ptr, grad_value_ptr,
    groups, height, width, channels, tiles_w, tiles_per_map,
    sd_b, sd_g, sd_h, sd_w, sd_c,
    sa_b, sa_g, sa_h, sa_w, sa_n,
    sv_b, sv_g, sv_h, sv_w, sv_c,
    K: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_value[k, :] = sum over queries q whose window holds k of attn[q, n(q -> k)] * grad_out[q, :]."""
    b, g, y, x, k_mask = _program_tile(groups, height, width, tiles_w, tiles_per_map, TILE_H, TILE_W)
    first_i, count_i = _query_range(y, height, K)
    first_j, count_j = _query_range(x, width, K)
    # loop bounds: the longest query range in this tile (K for tiles away from the borders)
    steps_i = tl.max(tl.where(k_mask, count_i, 0), axis=0)
    steps_j = tl.max(tl.where(k_mask, count_j, 0), axis=0)
    c = tl.arange(0, BLOCK_C)
    c_mask = (c < channels)[None, :]

    attn_bg = attn_ptr + b * sa_b + g * sa_g
    grad_out_bg = grad_out_ptr + b * sd_b + g * sd_g
    c_offs = (c * sd_c)[None, :]
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_C], dtype=tl.float32)
    for di in range(steps_i):
        i = first_i + di
        row_mask = k_mask & (di < count_i)
        # row of key y inside the window of query row i (window start written out: a helper call in
        # this loop slows the CPU interpreter several times)
        a = y - tl.minimum(tl.maximum(i - K // 2, 0), height - K)
        attn_row = attn_bg + i * sa_h + (a * K) * sa_n
        grad_out_row = grad_out_bg + i * sd_h
        for dj in range(steps_j):
            j = first_j + dj
            m = row_mask & (dj < count_j)
            bb = x - tl.minimum(tl.maximum(j - K // 2, 0), width - K)  # column of key x in query column j's window
            weight = tl.load(attn_row + j * sa_w + bb * sa_n, mask=m, other=0.0).to(tl.float32)
            go = tl.load((grad_out_row + j * sd_w)[:, None] + c_offs, mask=m[:, None] & c_mask, other=0.0)
            acc += weight[:, None] * go.to(tl.float32)

    grad_value = grad_value_ptr + b * sv_b + g * sv_g + (y * sv_h + x * sv_w)[:, None] + c[None, :] * sv_c
    tl.store(grad_value, acc.to(grad_value_ptr.dtype.element_ty), mask=k_mask[:, None] & c_mask)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _launch_config(maps: int, height: int, width: int, channels: int) -> dict:
    """Tile shape, channel block and warps for ``maps`` (batch x groups) maps of height x width.

    All C channels of a query sit in one block (C per group is small: 16-48 in the real models), so
    ``attn`` is never re-read for another channel block. The query tile holds about ``_TILE_ELEMENTS``
    accumulators, is at most 16 wide (rows of neighbouring queries stay coalesced along W) and no larger
    than the map; it is halved while the launch would have too few programs to fill the GPU.
    """
    block_c = _next_pow2(channels)
    queries = min(max(_TILE_ELEMENTS // block_c, _MIN_TILE_QUERIES), _MAX_TILE_QUERIES)
    tile_w = min(16, _next_pow2(width), queries)
    tile_h = min(queries // tile_w, _next_pow2(height))

    def programs(th: int, tw: int) -> int:
        return maps * -(-height // th) * -(-width // tw)

    while programs(tile_h, tile_w) < _TARGET_PROGRAMS and tile_h * tile_w > _MIN_SHRUNK_QUERIES:
        if tile_h >= tile_w // 2 and tile_h > 1:
            tile_h //= 2
        else:
            tile_w //= 2
    tiles_w = -(-width // tile_w)
    tiles_per_map = -(-height // tile_h) * tiles_w
    return dict(
        grid=(maps * tiles_per_map,),
        tiles_w=tiles_w,
        tiles_per_map=tiles_per_map,
        meta=dict(
            TILE_H=tile_h,
            TILE_W=tile_w,
            BLOCK_C=block_c,
            num_warps=4 if tile_h * tile_w * block_c >= 1024 else 2,
        ),
    )


def _slice_span(t: Tensor) -> int:
    """Largest element offset inside one (batch, group) slice of a (B, G, H, W, X) tensor."""
    return sum((size - 1) * stride for size, stride in zip(t.shape[2:], t.stride()[2:]))


def _addressable(t: Tensor) -> Tensor:
    """``t`` itself if offsets inside a (batch, group) slice fit the kernels' int32 math, else a contiguous copy.

    Only a tensor whose single slice spans 2**31 elements or more (an exotic stride order of a huge tensor) is copied.
    """
    return t if _slice_span(t) <= _MAX_SLICE_SPAN else t.contiguous()


def _empty_like(t: Tensor) -> Tensor:
    """Output buffer in ``t``'s layout (dense permutations kept), contiguous where that layout is not addressable."""
    out = torch.empty_like(t)
    return out if _slice_span(out) <= _MAX_SLICE_SPAN else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("the Triton ContMix kernels need the `triton` package, which cannot be imported here")


def _check(attn: Tensor, value: Tensor, kernel_size: int) -> None:
    check_kernel_inputs(attn, value, kernel_size, weights_name="attn")
    if attn.device != value.device:
        raise ValueError(f"attn is on {attn.device} but value is on {value.device}")


def av_forward(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """Neighbourhood weighted sum: (B, G, H, W, C) with ``out[q] = sum_n attn[q, n] * value[neighbour n of q]``.

    ``attn`` (B, G, H, W, K*K) and ``value`` (B, G, H, W, C) may have any strides and dtypes (fp32, fp16,
    bf16); the sum is accumulated in fp32 and returned in ``value``'s dtype and memory layout.
    """
    _check(attn, value, kernel_size)
    out = _empty_like(value)
    if out.numel() == 0:
        return out
    batch, groups, height, width, channels = value.shape
    _require_triton()
    attn, value = _addressable(attn), _addressable(value)
    cfg = _launch_config(batch * groups, height, width, channels)
    _forward_kernel[cfg["grid"]](
        attn, value, out,
        groups, height, width, channels, cfg["tiles_w"], cfg["tiles_per_map"],
        *attn.stride(), *value.stride(), *out.stride(),
        K=kernel_size, **cfg["meta"],
    )
    return out


def av_backward(grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Gradients ``(grad_attn, grad_value)`` of :func:`av_forward`, in the dtypes and layouts of ``attn`` and ``value``.

    grad_attn[q, n] = <grad_out[q], value[neighbour n of q]>; grad_value[k] gathers
    attn[q, n(q -> k)] * grad_out[q] over the queries q whose window holds k (no atomics).
    """
    _check(attn, value, kernel_size)
    if grad_out.shape != value.shape or grad_out.device != value.device:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} on {grad_out.device} does not match value "
                         f"{tuple(value.shape)} on {value.device}")
    grad_attn = _empty_like(attn)
    grad_value = _empty_like(value)
    if grad_value.numel() == 0:  # no channels (or an empty batch): grad_attn is a sum over nothing
        return grad_attn.zero_(), grad_value
    batch, groups, height, width, channels = value.shape
    _require_triton()
    grad_out, attn, value = (_addressable(t) for t in (grad_out, attn, value))
    cfg = _launch_config(batch * groups, height, width, channels)
    common = (groups, height, width, channels, cfg["tiles_w"], cfg["tiles_per_map"])
    _grad_attn_kernel[cfg["grid"]](
        grad_out, value, grad_attn, *common,
        *grad_out.stride(), *value.stride(), *grad_attn.stride(),
        K=kernel_size, **cfg["meta"],
    )
    _grad_value_kernel[cfg["grid"]](
        grad_out, attn, grad_value, *common,
        *grad_out.stride(), *attn.stride(), *grad_value.stride(),
        K=kernel_size, **cfg["meta"],
    )
    return grad_attn, grad_value
