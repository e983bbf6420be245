"""Registry of the neighbourhood weighted-sum kernels and the choice between them.

A backend is a pair of functions on (B, G, H, W, K*K) weights and (B, G, H, W, C) values --
``forward(attn, value, k) -> out`` and ``backward(grad_out, attn, value, k) -> (grad_attn, grad_value)`` --
plus a capability check. 'auto' picks by device: 'triton' for CUDA tensors when it works, 'cpu' for CPU
tensors, 'reference' otherwise; the ``backend`` argument or the ``OVERLOCK_CONTMIX_BACKEND`` environment
variable overrides it.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from torch import Tensor

from . import cpu, reference

ENV_VAR = "OVERLOCK_CONTMIX_BACKEND"
TRITON_MODULE = f"{__package__}.triton_av"


@dataclass(frozen=True)
class Backend:
    """Kernels of one backend, the test of whether they can run on a value tensor, and what they need."""

    forward: Callable[[Tensor, Tensor, int], Tensor]
    backward: Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor]]
    supports: Callable[[Tensor], bool]
    requirement: str


def _triton() -> ModuleType:
    """The triton kernels, imported on first use (importing triton costs time and may fail)."""
    return importlib.import_module(TRITON_MODULE)


def _triton_supports(value: Tensor) -> bool:
    try:
        return _triton().triton_available(value)
    except ImportError:
        return False


BACKENDS: dict[str, Backend] = {
    "reference": Backend(reference.av_forward, reference.av_backward, lambda value: True, "nothing"),
    "cpu": Backend(cpu.av_forward, cpu.av_backward, lambda value: value.device.type == "cpu", "a CPU tensor"),
    "triton": Backend(
        lambda attn, value, k: _triton().av_forward(attn, value, k),
        lambda grad_out, attn, value, k: _triton().av_backward(grad_out, attn, value, k),
        _triton_supports,
        "a CUDA tensor and a working triton install (or TRITON_INTERPRET=1 for CPU tensors)",
    ),
}
# automatic choice by device type, fastest first; 'reference' runs everywhere else
_AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("triton",), "cpu": ("cpu",)}


def available_backends(value: Tensor | None = None) -> list[str]:
    """Names of the registered backends, or of those that can run on ``value`` when it is given."""
    return [name for name, backend in BACKENDS.items() if value is None or backend.supports(value)]


def select_backend(value: Tensor, backend: str | None = None) -> str:
    """Resolve ``backend`` (else the environment override, else 'auto') to a backend that can run on ``value``."""
    name = backend or os.environ.get(ENV_VAR) or "auto"
    if name == "auto":
        for candidate in _AUTO_ORDER.get(value.device.type, ()):
            if BACKENDS[candidate].supports(value):
                return candidate
        return "reference"
    if name not in BACKENDS:
        raise ValueError(f"unknown ContMix backend {name!r}; choose one of: {', '.join(['auto', *BACKENDS])}")
    if not BACKENDS[name].supports(value):
        raise RuntimeError(
            f"ContMix backend {name!r} cannot run on a {value.dtype} tensor on {value.device.type}: "
            f"it needs {BACKENDS[name].requirement}"
        )
    return name
