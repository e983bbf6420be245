"""Registry of the neighbourhood weighted-sum kernels and the choice between them.

A backend is a pair of functions on (B, G, H, W, K*K) weights and (B, G, H, W, C) values --
``forward(attn, value, k) -> out`` and ``backward(grad_out, attn, value, k) -> (grad_attn, grad_value)`` --
plus a capability check. A module names its backend once, when it is built: ``'auto'`` (the default) lets the
op take the fastest one that can run on the tensors it is given ('triton' for CUDA tensors when it works, 'cpu'
for CPU tensors, 'reference' elsewhere), as any PyTorch op picks its kernel by device; any other name is used
as it is, and an error says so when it cannot run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from torch import Tensor

from . import cpu, reference

TRITON_MODULE = f"{__package__}.triton_av"
AUTO = "auto"


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
# the automatic choice by device type, fastest first; 'reference' runs everywhere else
_AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("triton",), "cpu": ("cpu",)}


def check_backend_name(name: str) -> str:
    """``name`` if it is 'auto' or a registered backend, else a clear error listing the choices."""
    if name != AUTO and name not in BACKENDS:
        raise ValueError(f"unknown ContMix backend {name!r}; choose one of: {', '.join([AUTO, *BACKENDS])}")
    return name


def available_backends(value: Tensor | None = None) -> list[str]:
    """Names of the registered backends, or of those that can run on ``value`` when it is given."""
    return [name for name, backend in BACKENDS.items() if value is None or backend.supports(value)]


def resolve_backend(name: str, value: Tensor) -> str:
    """The backend that runs a module's ``name`` ('auto' or a backend name) on ``value``."""
    check_backend_name(name)
    if name == AUTO:
        for candidate in _AUTO_ORDER.get(value.device.type, ()):
            if BACKENDS[candidate].supports(value):
                return candidate
        return "reference"
    if not BACKENDS[name].supports(value):
        raise RuntimeError(
            f"ContMix backend {name!r} cannot run on a {value.dtype} tensor on {value.device.type}: "
            f"it needs {BACKENDS[name].requirement}"
        )
    return name
