"""Reference implementation of the ContMix kernel application.

This is the test oracle for every faster backend. It follows the neighbourhood
semantics of NATTEN's ``na2d_av`` (dilation 1, odd kernel): the K x K window of a
query is shifted inward at the borders so it stays inside the map.

Memory stays bounded: the K^2 neighbours are visited one shifted slice at a time,
so no K^2-times copy of the value tensor is ever materialised (the unfold
fallback of the official code makes one, forward and backward).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def window_starts(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """First neighbour index of every query on an axis: ``clamp(i - K//2, 0, L - K)``."""
    idx = torch.arange(length, device=device)
    return (idx - kernel_size // 2).clamp(0, length - kernel_size)


def neighbour_indices(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """(L, K) table: position of the k-th neighbour of every query on an axis."""
    offsets = torch.arange(kernel_size, device=device)
    return window_starts(length, kernel_size, device)[:, None] + offsets[None, :]


def relative_position_bias(rpb: Tensor, height: int, width: int, kernel_size: int) -> Tensor:
    """Expand a (G, 2K-1, 2K-1) table to per-query biases of shape (G, H, W, K*K).

    Query (i, j) and neighbour (a, b) read ``rpb[g, s_i + a - i + K - 1, s_j + b - j + K - 1]``
    where ``s`` are the shifted window starts.
    """
    return relative_position_bias_grid(rpb, height, width, kernel_size).reshape(rpb.shape[0], height, width, -1)


def relative_position_bias_grid(rpb: Tensor, height: int, width: int, kernel_size: int) -> Tensor:
    """``relative_position_bias`` shaped (G, H, W, K, K), as it is added to (.., K, K) logits.

    Along each axis the K indices of a query are consecutive, starting at ``s_i - i + K - 1``, so the
    table is cut into its K-long windows (``unfold``, a view) and each query selects one window with
    ``index_select``: a copy of K-element rows instead of a scalar gather, with a fast backward.
    """
    k = kernel_size
    device = rpb.device
    row_start = window_starts(height, k, device) - torch.arange(height, device=device) + k - 1
    col_start = window_starts(width, k, device) - torch.arange(width, device=device) + k - 1
    rows = rpb.unfold(1, k, 1).index_select(1, row_start)  # (G, H, 2K-1, K): [g, i, c, a]
    return rows.unfold(2, k, 1).index_select(2, col_start)  # (G, H, W, K, K): [g, i, j, a, b]


def av_forward(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """``out[q] = sum_n attn[q, n] * value[neighbour n of q]``, one shifted slice of ``value`` at a time."""
    height, width = value.shape[2], value.shape[3]
    rows = neighbour_indices(height, kernel_size, value.device)
    cols = neighbour_indices(width, kernel_size, value.device)
    out = torch.zeros_like(value)
    for a in range(kernel_size):
        value_rows = value.index_select(2, rows[:, a])
        for b in range(kernel_size):
            weight = attn[..., a * kernel_size + b].unsqueeze(-1)
            out.addcmul_(weight, value_rows.index_select(3, cols[:, b]))
    return out


def av_backward(grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Gradients (grad_attn, grad_value) of ``av_forward``: NATTEN's ``na2d_av`` backward formulas."""
    k = kernel_size
    height, width = value.shape[2], value.shape[3]
    rows = neighbour_indices(height, k, value.device)
    cols = neighbour_indices(width, k, value.device)
    grad_out = grad_out.contiguous()
    grad_attn = torch.empty_like(attn)
    grad_value = torch.zeros_like(value)
    for a in range(k):
        value_rows = value.index_select(2, rows[:, a])
        grad_rows = torch.zeros_like(value)
        for b in range(k):
            n = a * k + b
            grad_attn[..., n] = (grad_out * value_rows.index_select(3, cols[:, b])).sum(-1)
            grad_rows.index_add_(3, cols[:, b], grad_out * attn[..., n].unsqueeze(-1))
        grad_value.index_add_(2, rows[:, a], grad_rows)
    return grad_attn, grad_value


class _NeighbourhoodWeightedSum(torch.autograd.Function):
    """``av_forward`` with ``av_backward`` as its backward: the oracle's autograd, independent of the custom op."""

    @staticmethod
    def forward(ctx, attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(attn, value)
        ctx.kernel_size = kernel_size
        return av_forward(attn, value, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        attn, value = ctx.saved_tensors
        grad_attn, grad_value = av_backward(grad_out, attn, value, ctx.kernel_size)
        return grad_attn, grad_value, None


def neighbourhood_weighted_sum(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """Apply per-pixel kernels ``attn`` (B, G, H, W, K*K) to ``value`` (B, G, H, W, C)."""
    dtype = torch.promote_types(attn.dtype, value.dtype)
    out = _NeighbourhoodWeightedSum.apply(attn.to(dtype), value.to(dtype), kernel_size)
    return out.to(value.dtype)


def contmix_reference(
    logits: Tensor,
    value: Tensor,
    kernel_size: int,
    rpb: Tensor | None = None,
) -> Tensor:
    """Softmax(logits + relative position bias) applied as neighbourhood kernels to ``value``."""
    if rpb is not None:
        bias = relative_position_bias(rpb, value.shape[2], value.shape[3], kernel_size)
        logits = logits + bias.unsqueeze(0).to(logits.dtype)
    attn = torch.softmax(logits, dim=-1)
    return neighbourhood_weighted_sum(attn, value, kernel_size)
