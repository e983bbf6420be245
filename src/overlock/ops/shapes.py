"""Shape checks shared by the public op and the backends that can be called directly (scriptable)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor


def check_kernel_size(kernel_size: int) -> None:
    """Clear error for a kernel size that is not a positive odd number."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")


def check_window(kernel_size: int, height: int, width: int, dilation: int = 1) -> None:
    """Clear errors for a kernel size that is not odd or does not fit an H x W map (K * dilation on each side)."""
    check_kernel_size(kernel_size)
    if dilation < 1:
        raise ValueError(f"dilation must be a positive integer, got {dilation}")
    if min(height, width) < kernel_size * dilation:
        if dilation == 1:
            raise ValueError(f"map {height}x{width} is smaller than kernel_size {kernel_size}")
        raise ValueError(
            f"map {height}x{width} is smaller than kernel_size {kernel_size} x dilation {dilation} "
            f"= {kernel_size * dilation}"
        )


def check_kernel_inputs(
    weights: Tensor, value: Tensor, kernel_size: int, weights_name: str = "logits", dilation: int = 1
) -> None:
    """Clear errors for (B, G, H, W, K*K) kernel weights and (B, G, H, W, C) values that do not fit."""
    check_kernel_size(kernel_size)
    if value.dim() != 5 or weights.dim() != 5:
        raise ValueError(
            f"expected {weights_name} (B, G, H, W, K*K) and value (B, G, H, W, C), "
            f"got {weights_name} {list(weights.shape)} and value {list(value.shape)}"
        )
    if weights.shape[:4] != value.shape[:4] or weights.shape[-1] != kernel_size * kernel_size:
        raise ValueError(
            f"shape of {weights_name} {list(weights.shape)} does not match value {list(value.shape)} "
            f"with kernel_size {kernel_size} (last dim must be {kernel_size * kernel_size})"
        )
    check_window(kernel_size, value.shape[2], value.shape[3], dilation)


def check_rpb(rpb: Optional[Tensor], groups: int, kernel_size: int) -> None:
    """Clear error for a relative position bias table that is not (G, 2K-1, 2K-1)."""
    if rpb is not None:
        expected = [groups, 2 * kernel_size - 1, 2 * kernel_size - 1]
        if list(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape {expected}, got {list(rpb.shape)}")
