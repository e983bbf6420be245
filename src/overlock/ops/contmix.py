"""Public entry point of the ContMix kernel application.

``contmix_apply`` is the only function callers need: relative position bias and softmax in plain
PyTorch, then the neighbourhood weighted sum as the custom op ``overlock::neighbourhood_av`` run by the
backend ``select_backend`` resolves (by capability, or the ``backend`` argument, or the
``OVERLOCK_CONTMIX_BACKEND`` environment variable).

The logits may also come as their factors (``LowRankLogits``: ContMix's logits are a product of each
token's query and the projected region keys). Inference (no gradient needed) on the CPU backend runs
bias, softmax and weighted sum fused, as ``overlock::softmax_av_cpu``, which never writes the kernel
weights (nor, from factors, the logits) to memory.

Dtypes: the weighted sum runs in the promoted dtype of logits and value (the CPU backend computes
half precision in float32), the softmax of half-precision logits in float32, and the output has the
dtype of ``value``. Under autocast the custom op keeps the dtypes it is given.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .backends import ENV_VAR, available_backends, select_backend
from .custom_op import neighbourhood_av, softmax_av_cpu
from .reference import relative_position_bias_grid
from .shapes import check_kernel_inputs, check_window

__all__ = ["ENV_VAR", "LowRankLogits", "available_backends", "contmix_apply", "select_backend"]

_HALF = (torch.float16, torch.bfloat16)


class LowRankLogits(NamedTuple):
    """Kernel logits ``query @ key + bias``, kept as factors.

    query (B, G, H*W, c), key (B, G, c, K*K), bias (K*K,) or None; the logits are (B, G, H*W, K*K) with the
    map's rows flattened, row-major.
    """

    query: Tensor
    key: Tensor
    bias: Tensor | None = None

    def dense(self, height: int, width: int) -> Tensor:
        """The (B, G, H, W, K*K) logits."""
        logits = self.query @ self.key
        if self.bias is not None:
            logits = logits + self.bias
        return logits.unflatten(2, (height, width))


def _check_low_rank(logits: LowRankLogits, value: Tensor, kernel_size: int) -> None:
    query, key, bias = logits
    if value.dim() != 5 or query.dim() != 4 or key.dim() != 4:
        raise ValueError(
            f"expected query (B, G, H*W, c), key (B, G, c, K*K) and value (B, G, H, W, C), got query "
            f"{tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)}"
        )
    b, g, h, w = value.shape[:4]
    check_window(kernel_size, h, w)
    expected_key = (b, g, query.shape[-1], kernel_size**2)
    if tuple(query.shape[:3]) != (b, g, h * w) or tuple(key.shape) != expected_key:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} do not fit value {tuple(value.shape)} with "
            f"kernel_size {kernel_size}: expected query ({b}, {g}, {h * w}, c) and key {expected_key}"
        )
    if bias is not None and tuple(bias.shape) != (kernel_size**2,):
        raise ValueError(f"bias must have shape ({kernel_size ** 2},), got {tuple(bias.shape)}")


def _check_rpb(rpb: Tensor | None, value: Tensor, kernel_size: int) -> None:
    if rpb is not None and tuple(rpb.shape) != (value.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"rpb must have shape {(value.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1)}, "
            f"got {tuple(rpb.shape)}"
        )


def _fusable(backend: str, tensors: list[Tensor]) -> bool:
    """Whether the CPU inference fusion applies: the 'cpu' backend, no gradient needed, one float32/64 dtype."""
    if backend != "cpu" or tensors[0].dtype not in (torch.float32, torch.float64):
        return False
    if any(t.dtype != tensors[0].dtype for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _fused_bias(bias: Tensor | None, rpb: Tensor | None, value: Tensor, kernel_size: int) -> Tensor:
    """Relative position bias plus the logits' (K*K,) bias, as (G or 1, H*W, K*K)."""
    height, width = value.shape[2], value.shape[3]
    area, positions = height * width, kernel_size**2
    if rpb is None:
        total = value.new_zeros(1, 1, positions)
    else:
        total = relative_position_bias_grid(rpb, height, width, kernel_size).reshape(rpb.shape[0], area, positions)
    if bias is not None:
        total = total + bias
    return total.expand(total.shape[0], area, positions)


def contmix_apply(
    logits: Tensor | LowRankLogits,
    value: Tensor,
    kernel_size: int,
    rpb: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Apply per-pixel dynamic kernels to ``value`` with neighbourhood semantics.

    Args:
        logits: (B, G, H, W, K*K) kernel logits, before the softmax, or their factors (``LowRankLogits``).
        value: (B, G, H, W, C) features, G groups of C channels.
        kernel_size: odd K, at most min(H, W).
        rpb: optional (G, 2K-1, 2K-1) relative position bias added to the logits.
        backend: 'auto' or a name from ``available_backends()`` ('reference', 'cpu', 'triton');
            defaults to the ``OVERLOCK_CONTMIX_BACKEND`` environment variable, then 'auto'.

    Returns:
        (B, G, H, W, C): ``sum_n softmax(logits + bias)[.., n] * value[neighbour n]``, in the dtype of
        ``value`` and its channel layout (planar for NCHW-derived views, else channels-last).
    """
    low_rank = isinstance(logits, LowRankLogits)
    if low_rank:
        _check_low_rank(logits, value, kernel_size)
    else:
        check_kernel_inputs(logits, value, kernel_size)
    _check_rpb(rpb, value, kernel_size)
    name = select_backend(value, backend)
    height, width = value.shape[2], value.shape[3]
    inputs = [value, rpb, *(logits if low_rank else (logits,))]
    if _fusable(name, [t for t in inputs if t is not None]):
        bias = _fused_bias(logits.bias if low_rank else None, rpb, value, kernel_size)
        if low_rank:
            return softmax_av_cpu(None, logits.query, logits.key, bias, value, kernel_size)
        return softmax_av_cpu(logits.flatten(2, 3), None, None, bias, value, kernel_size)
    if low_rank:
        logits = logits.dense(height, width)
    if rpb is not None:
        bias = relative_position_bias_grid(rpb, height, width, kernel_size).to(logits.dtype)
        logits = (logits.unflatten(-1, (kernel_size, kernel_size)) + bias).flatten(-2)
    dtype = torch.promote_types(logits.dtype, value.dtype)
    attn = torch.softmax(logits, dim=-1, dtype=torch.float32 if logits.dtype in _HALF else logits.dtype)
    out = neighbourhood_av(attn.to(dtype), value.to(dtype), kernel_size, name)
    return out.to(value.dtype)
