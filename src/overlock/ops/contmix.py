"""Public entry point of the ContMix kernel application.

``contmix_apply`` is the only function callers need: relative position bias and softmax in plain
PyTorch, then the neighbourhood weighted sum as the custom op ``overlock::neighbourhood_av`` run by the
backend ``select_backend`` resolves (by capability, or the ``backend`` argument, or the
``OVERLOCK_CONTMIX_BACKEND`` environment variable).

Dtypes: the weighted sum runs in the promoted dtype of logits and value (the CPU backend computes
half precision in float32), the softmax of half-precision logits in float32, and the output has the
dtype of ``value``. Under autocast the custom op keeps the dtypes it is given.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import ENV_VAR, available_backends, select_backend
from .custom_op import neighbourhood_av
from .reference import relative_position_bias_grid
from .shapes import check_kernel_inputs

__all__ = ["ENV_VAR", "available_backends", "contmix_apply", "select_backend"]

_HALF = (torch.float16, torch.bfloat16)


def _check_shapes(logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor | None) -> None:
    check_kernel_inputs(logits, value, kernel_size)
    if rpb is not None and tuple(rpb.shape) != (value.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"rpb must have shape {(value.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1)}, "
            f"got {tuple(rpb.shape)}"
        )


def contmix_apply(
    logits: Tensor,
    value: Tensor,
    kernel_size: int,
    rpb: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Apply per-pixel dynamic kernels to ``value`` with neighbourhood semantics.

    Args:
        logits: (B, G, H, W, K*K) kernel logits, before the softmax.
        value: (B, G, H, W, C) features, G groups of C channels.
        kernel_size: odd K, at most min(H, W).
        rpb: optional (G, 2K-1, 2K-1) relative position bias added to the logits.
        backend: 'auto' or a name from ``available_backends()`` ('reference', 'cpu', 'triton');
            defaults to the ``OVERLOCK_CONTMIX_BACKEND`` environment variable, then 'auto'.

    Returns:
        (B, G, H, W, C): ``sum_n softmax(logits + bias)[.., n] * value[neighbour n]``, in the dtype of
        ``value`` and its channel layout (planar for NCHW-derived views, else channels-last).
    """
    _check_shapes(logits, value, kernel_size, rpb)
    name = select_backend(value, backend)
    if rpb is not None:
        bias = relative_position_bias_grid(rpb, value.shape[2], value.shape[3], kernel_size).to(logits.dtype)
        logits = (logits.unflatten(-1, (kernel_size, kernel_size)) + bias).flatten(-2)
    dtype = torch.promote_types(logits.dtype, value.dtype)
    attn = torch.softmax(logits, dim=-1, dtype=torch.float32 if logits.dtype in _HALF else logits.dtype)
    out = neighbourhood_av(attn.to(dtype), value.to(dtype), kernel_size, name)
    return out.to(value.dtype)
