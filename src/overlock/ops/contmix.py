"""Public entry point of the ContMix kernel application, with backend selection.

``contmix_apply`` is the only function callers need. Backends are chosen by capability
(device, dtype, what is installed) unless overridden by the ``backend`` argument or the
``OVERLOCK_CONTMIX_BACKEND`` environment variable.
"""
from __future__ import annotations

import os
from typing import Callable

from torch import Tensor

from .reference import contmix_reference

ENV_VAR = "OVERLOCK_CONTMIX_BACKEND"

BackendFn = Callable[[Tensor, Tensor, int, "Tensor | None"], Tensor]

# name -> (implementation, capability check on the value tensor)
_BACKENDS: dict[str, tuple[BackendFn, Callable[[Tensor], bool]]] = {
    "reference": (contmix_reference, lambda value: True),
}
# preference order for automatic selection, fastest first
_AUTO_ORDER: tuple[str, ...] = ("reference",)


def available_backends() -> list[str]:
    """Names of all backends compiled into this installation."""
    return list(_BACKENDS)


def select_backend(value: Tensor, backend: str | None = None) -> str:
    """Resolve ``backend`` (or the environment override, or 'auto') to a usable backend name."""
    name = backend or os.environ.get(ENV_VAR) or "auto"
    if name == "auto":
        for candidate in _AUTO_ORDER:
            if _BACKENDS[candidate][1](value):
                return candidate
        return "reference"
    if name not in _BACKENDS:
        raise ValueError(f"unknown ContMix backend {name!r}; available: {', '.join(['auto', *_BACKENDS])}")
    if not _BACKENDS[name][1](value):
        raise RuntimeError(
            f"ContMix backend {name!r} cannot run on a {value.dtype} tensor on {value.device.type}"
        )
    return name


def _check_shapes(logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor | None) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if value.dim() != 5 or logits.dim() != 5:
        raise ValueError(
            "expected logits (B, G, H, W, K*K) and value (B, G, H, W, C), "
            f"got logits {tuple(logits.shape)} and value {tuple(value.shape)}"
        )
    if logits.shape[:4] != value.shape[:4] or logits.shape[-1] != kernel_size**2:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not match value {tuple(value.shape)} "
            f"with kernel_size {kernel_size} (last dim must be {kernel_size ** 2})"
        )
    height, width = value.shape[2], value.shape[3]
    if min(height, width) < kernel_size:
        raise ValueError(f"map {height}x{width} is smaller than kernel_size {kernel_size}")
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
        backend: 'auto', 'reference', or another name from ``available_backends()``;
            defaults to the ``OVERLOCK_CONTMIX_BACKEND`` environment variable, then 'auto'.

    Returns:
        (B, G, H, W, C): ``sum_n softmax(logits + bias)[.., n] * value[neighbour n]``.
    """
    _check_shapes(logits, value, kernel_size, rpb)
    impl = _BACKENDS[select_backend(value, backend)][0]
    return impl(logits, value, kernel_size, rpb)
