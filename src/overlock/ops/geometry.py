"""Window geometry of the ContMix kernel application (NATTEN's neighbourhood semantics, odd K).

Index arithmetic only, shared by the reference oracle and every backend, so that no fast backend needs to
import the oracle. On an axis of length L the K-long window of query ``i`` starts at ``clamp(i - K//2, 0, L - K)``:
shifted inward at the borders, never zero-padded.

With dilation d (NATTEN's definition) an axis splits into d interleaved sub-axes, the positions ``g, g + d,
g + 2d, ...`` for ``g < d``, and each query's window is the undilated one on its own sub-axis: query ``i = i'd + g``
has the neighbours ``(s' + k) d + g`` for ``s' = clamp(i' - K//2, 0, L_g - K)``, where ``L_g`` is the length of
the sub-axis. The relative position bias is indexed in sub-axis units too.
"""
from __future__ import annotations

import torch
from torch import Tensor


def window_starts(length: int, kernel_size: int, device: torch.device | None = None, dilation: int = 1) -> Tensor:
    """First neighbour index of every query on an axis: ``clamp(i - K//2, 0, L - K)``, on its sub-axis when
    dilated."""
    idx = torch.arange(length, device=device)
    if dilation == 1:
        return (idx - kernel_size // 2).clamp(0, length - kernel_size)
    sub_axis = idx % dilation
    sub_length = (length - sub_axis + dilation - 1) // dilation
    sub_start = torch.minimum((idx // dilation - kernel_size // 2).clamp(min=0), sub_length - kernel_size)
    return sub_start * dilation + sub_axis


def neighbour_indices(length: int, kernel_size: int, device: torch.device | None = None, dilation: int = 1) -> Tensor:
    """(L, K) table: position of the k-th neighbour of every query on an axis."""
    offsets = torch.arange(kernel_size, device=device) * dilation
    return window_starts(length, kernel_size, device, dilation)[:, None] + offsets[None, :]


def relative_position_bias_grid(rpb: Tensor, height: int, width: int, kernel_size: int, dilation: int = 1) -> Tensor:
    """A (G, 2K-1, 2K-1) bias table expanded to every query's window, (G, H, W, K, K).

    Query (i, j) and neighbour (a, b) read ``rpb[g, (s_i - i) / d + a + K - 1, (s_j - j) / d + b + K - 1]`` where
    ``s`` are the window starts (``s_i - i`` is a multiple of the dilation d). Along each axis a query's K indices
    are consecutive, so the table is cut into its K-long windows (``unfold``, a view) and each query selects one
    window (``index_select``): K-element rows copied instead of single elements gathered, with a fast backward.
    """
    k = kernel_size
    device = rpb.device
    row_shift = window_starts(height, k, device, dilation) - torch.arange(height, device=device)
    col_shift = window_starts(width, k, device, dilation) - torch.arange(width, device=device)
    row_start = torch.div(row_shift, dilation, rounding_mode="floor") + k - 1
    col_start = torch.div(col_shift, dilation, rounding_mode="floor") + k - 1
    rows = rpb.unfold(1, k, 1).index_select(1, row_start)  # (G, H, 2K-1, K): [g, i, c, a]
    return rows.unfold(2, k, 1).index_select(2, col_start)  # (G, H, W, K, K): [g, i, j, a, b]


def relative_position_bias(rpb: Tensor, height: int, width: int, kernel_size: int, dilation: int = 1) -> Tensor:
    """``relative_position_bias_grid`` as (G, H, W, K*K), the layout of the kernel logits."""
    grid = relative_position_bias_grid(rpb, height, width, kernel_size, dilation)
    return grid.reshape(rpb.shape[0], height, width, -1)
