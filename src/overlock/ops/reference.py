"""Reference implementation of the ContMix kernel application.

This is the test oracle for every faster backend. It follows the neighbourhood
semantics of NATTEN's ``na2d_av`` (odd kernel): the K x K window of a query is
shifted inward at the borders so it stays inside the map; with dilation d its
neighbours are d apart, on the query's own interleaved sub-grid (``geometry``).

Memory stays bounded: the K^2 neighbours are visited one shifted slice at a time,
so no K^2-times copy of the value tensor is ever materialised (the unfold
fallback of the official code makes one, forward and backward).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .geometry import neighbour_indices, relative_position_bias


def av_forward(attn: Tensor, value: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """``out[q] = sum_n attn[q, n] * value[neighbour n of q]``, one shifted slice of ``value`` at a time."""
    height, width = value.shape[2], value.shape[3]
    rows = neighbour_indices(height, kernel_size, value.device, dilation)
    cols = neighbour_indices(width, kernel_size, value.device, dilation)
    out = torch.zeros_like(value)
    for a in range(kernel_size):
        value_rows = value.index_select(2, rows[:, a])
        for b in range(kernel_size):
            weight = attn[..., a * kernel_size + b].unsqueeze(-1)
            out.addcmul_(weight, value_rows.index_select(3, cols[:, b]))
    return out


def av_backward(
    grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int, dilation: int = 1
) -> tuple[Tensor, Tensor]:
    """Gradients (grad_attn, grad_value) of ``av_forward``: NATTEN's ``na2d_av`` backward formulas."""
    k = kernel_size
    height, width = value.shape[2], value.shape[3]
    rows = neighbour_indices(height, k, value.device, dilation)
    cols = neighbour_indices(width, k, value.device, dilation)
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
    def forward(ctx, attn: Tensor, value: Tensor, kernel_size: int, dilation: int) -> Tensor:
        ctx.save_for_backward(attn, value)
        ctx.kernel_size, ctx.dilation = kernel_size, dilation
        return av_forward(attn, value, kernel_size, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        attn, value = ctx.saved_tensors
        grad_attn, grad_value = av_backward(grad_out, attn, value, ctx.kernel_size, ctx.dilation)
        return grad_attn, grad_value, None, None


def neighbourhood_weighted_sum(attn: Tensor, value: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """Apply per-pixel kernels ``attn`` (B, G, H, W, K*K) to ``value`` (B, G, H, W, C)."""
    dtype = torch.promote_types(attn.dtype, value.dtype)
    out = _NeighbourhoodWeightedSum.apply(attn.to(dtype), value.to(dtype), kernel_size, dilation)
    return out.to(value.dtype)


def contmix_reference(
    logits: Tensor,
    value: Tensor,
    kernel_size: int,
    rpb: Tensor | None = None,
    dilation: int = 1,
) -> Tensor:
    """Softmax(logits + relative position bias) applied as neighbourhood kernels to ``value``."""
    if rpb is not None:
        bias = relative_position_bias(rpb, value.shape[2], value.shape[3], kernel_size, dilation)
        logits = logits + bias.unsqueeze(0).to(logits.dtype)
    attn = torch.softmax(logits, dim=-1)
    return neighbourhood_weighted_sum(attn, value, kernel_size, dilation)
