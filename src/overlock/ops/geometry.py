"""Window geometry of the ContMix kernel application (NATTEN's neighbourhood semantics, dilation 1, odd K).

Index arithmetic only, shared by the reference oracle and every backend, so that no fast backend needs to
import the oracle. On an axis of length L the K-long window of query ``i`` starts at ``clamp(i - K//2, 0, L - K)``:
shifted inward at the borders, never zero-padded.
"""
from __future__ import annotations

import torch
from torch import Tensor


def window_starts(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """First neighbour index of every query on an axis: ``clamp(i - K//2, 0, L - K)``."""
    idx = torch.arange(length, device=device)
    return (idx - kernel_size // 2).clamp(0, length - kernel_size)


def neighbour_indices(length: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """(L, K) table: position of the k-th neighbour of every query on an axis."""
    offsets = torch.arange(kernel_size, device=device)
    return window_starts(length, kernel_size, device)[:, None] + offsets[None, :]


def relative_position_bias_grid(rpb: Tensor, height: int, width: int, kernel_size: int) -> Tensor:
    """A (G, 2K-1, 2K-1) bias table expanded to every query's window, (G, H, W, K, K).

    Query (i, j) and neighbour (a, b) read ``rpb[g, s_i + a - i + K - 1, s_j + b - j + K - 1]`` where ``s`` are
    the window starts. Along each axis a query's K indices are consecutive, so the table is cut into its K-long
    windows (``unfold``, a view) and each query selects one window (``index_select``): K-element rows copied
    instead of single elements gathered, with a fast backward.
    """
    k = kernel_size
    device = rpb.device
    row_start = window_starts(height, k, device) - torch.arange(height, device=device) + k - 1
    col_start = window_starts(width, k, device) - torch.arange(width, device=device) + k - 1
    rows = rpb.unfold(1, k, 1).index_select(1, row_start)  # (G, H, 2K-1, K): [g, i, c, a]
    return rows.unfold(2, k, 1).index_select(2, col_start)  # (G, H, W, K, K): [g, i, j, a, b]


def relative_position_bias(rpb: Tensor, height: int, width: int, kernel_size: int) -> Tensor:
    """``relative_position_bias_grid`` as (G, H, W, K*K), the layout of the kernel logits."""
    return relative_position_bias_grid(rpb, height, width, kernel_size).reshape(rpb.shape[0], height, width, -1)
