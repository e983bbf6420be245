"""The neighbourhood weighted sum as PyTorch custom ops: ``overlock::neighbourhood_av`` (with its backward,
``overlock::neighbourhood_av_backward``) and the CPU inference fusion ``overlock::softmax_av``.

Registered with fake kernels and an autograd formula, so tracing, scripting, ``torch.compile(fullgraph=True)``
and ``torch.export`` see the kernel application as one opaque node whatever backend runs it. The backend is an
argument of the op (see ``backends``). Outputs and value gradients have the layout of ``value`` (see ``layout``),
gradients of the weights are contiguous; fakes and real kernels agree on those strides.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import cpu
from .backends import BACKENDS, resolve_backend
from .layout import empty_like_layout, in_layout_of


@torch.library.custom_op("overlock::neighbourhood_av", mutates_args=())
def neighbourhood_av(attn: Tensor, value: Tensor, kernel_size: int, backend: str) -> Tensor:
    """``out[q] = sum_n attn[q, n] * value[neighbour n of q]`` with the kernels ``backend`` resolves to."""
    kernels = BACKENDS[resolve_backend(backend, value)]
    return in_layout_of(kernels.forward(attn, value, kernel_size), value)


@neighbourhood_av.register_fake
def _(attn: Tensor, value: Tensor, kernel_size: int, backend: str) -> Tensor:
    return empty_like_layout(value)


@torch.library.custom_op("overlock::neighbourhood_av_backward", mutates_args=())
def neighbourhood_av_backward(
    grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int, backend: str
) -> tuple[Tensor, Tensor]:
    """Gradients (grad_attn, grad_value) of ``neighbourhood_av``."""
    kernels = BACKENDS[resolve_backend(backend, value)]
    grad_attn, grad_value = kernels.backward(grad_out, attn, value, kernel_size)
    return grad_attn.contiguous(), in_layout_of(grad_value, value)


@neighbourhood_av_backward.register_fake
def _(grad_out: Tensor, attn: Tensor, value: Tensor, kernel_size: int, backend: str) -> tuple[Tensor, Tensor]:
    return torch.empty_like(attn, memory_format=torch.contiguous_format), empty_like_layout(value)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    attn, value, kernel_size, backend = inputs
    ctx.save_for_backward(attn, value)
    ctx.kernel_size = kernel_size
    ctx.backend = backend


def _backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None]:
    attn, value = ctx.saved_tensors
    grad_attn, grad_value = neighbourhood_av_backward(grad_out, attn, value, ctx.kernel_size, ctx.backend)
    return grad_attn, grad_value, None, None


neighbourhood_av.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("overlock::softmax_av", mutates_args=())
def softmax_av(query: Tensor, key: Tensor, bias: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """Inference only (no autograd): ``neighbourhood_av(softmax(query @ key + bias), value)``, a cache-sized
    block at a time, so that neither the logits nor the kernel weights go to memory (``cpu.softmax_av_forward``)."""
    return in_layout_of(cpu.softmax_av_forward(query, key, bias, value, kernel_size), value)


@softmax_av.register_fake
def _(query: Tensor, key: Tensor, bias: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    return empty_like_layout(value)
