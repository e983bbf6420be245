"""Depthwise convolution with a fast weight gradient for large kernels on CPUs.

PyTorch's CPU backward of a depthwise convolution computes the weight gradient with a generic
algorithm that is very slow for large kernels (seconds for a 17x17 kernel on a 56x56 map at
batch 8). The weight gradient of a depthwise conv is itself a convolution: for channel ``c``,
``dW[c, a, b] = sum_{n, i, j} x_pad[n, c, i + d*a, j + d*b] * dy[n, c, i, j]`` (dilation d): the padded input
correlated with the output gradient used as a (H x W) kernel, one group per (channel, sample),
with stride equal to the dilation. Computed that way it is 10-40x faster for kernels of 15 and up, and
as fast or faster at 13.
The forward pass and the input gradient are PyTorch's own. Dilated kernels are run on CPUs as their
dense (zero-filled) equivalent, which oneDNN computes about ten times faster than the dilated form.

On AVX-512 CPUs the forward pass of a 13x13 kernel on a channels-last float32 map runs as the 15x15 kernel
with a zero border: oneDNN's AVX-512 depthwise kernel is 2-3x slower at 13x13 than at 15x15
(``python benchmarks/depthwise_kernel_sizes.py``), and the extra taps add exact zeros. Limited to AVX2 it
is the other way round, so oneDNN's instruction set decides. ``OVERLOCK_DEPTHWISE_PAD`` overrides the
choice: ``auto`` (the default), ``on`` (any CPU), ``off``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# PyTorch's CPU weight gradient falls off a cliff from 15x15 kernels on (measured, 2 cores, batch 8:
# 0.08-0.12 s at 13x13, 1.2-3.7 s at 15x15 on 28x28-56x56 maps); ours is level with it at 13x13 on
# 28x28-56x56 maps and 2-3x faster on 14x14 maps, slower below 13
MIN_KERNEL_FOR_CORRELATION = 13

PAD_ENV_VAR = "OVERLOCK_DEPTHWISE_PAD"
# kernel sizes oneDNN's AVX-512 depthwise forward is slower at than at PADDED_KERNEL_SIZE (see the module doc)
SLOW_KERNEL_SIZES = (13,)
PADDED_KERNEL_SIZE = 15


@torch.compiler.assume_constant_result  # a string Dynamo cannot trace; fixed for the process anyway
def _onednn_uses_avx512() -> bool:
    """True on AVX-512 CPUs unless oneDNN is limited to an older instruction set (``ONEDNN_MAX_CPU_ISA``)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and limit.startswith(("ALL", "AVX512", "AVX10"))


# set within ``kernels_as_given``: counting tools must see the model's own kernel sizes, not the padded ones
_AS_GIVEN: ContextVar[bool] = ContextVar("overlock_depthwise_kernels_as_given", default=False)


@contextmanager
def kernels_as_given() -> Iterator[None]:
    """Within it, depthwise convolutions run at their own kernel sizes (as ``count_macs`` needs them)."""
    token = _AS_GIVEN.set(True)
    try:
        yield
    finally:
        _AS_GIVEN.reset(token)


def kernel_padding_enabled() -> bool:
    """Whether kernels of ``SLOW_KERNEL_SIZES`` run padded here and now (``kernels_as_given``, the environment
    override, oneDNN's instruction set)."""
    if _AS_GIVEN.get():
        return False
    setting = os.environ.get(PAD_ENV_VAR, "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{PAD_ENV_VAR} must be 'auto', 'on' or 'off', got {setting!r}")
    if setting == "auto":
        return _onednn_uses_avx512()
    return setting == "on"


def pads_kernel_size(size: int) -> bool:
    """Whether ``forward_kernel`` may pad square kernels of this size."""
    return size in SLOW_KERNEL_SIZES


def forward_kernel(x: Tensor, weight: Tensor, padding: int) -> tuple[Tensor, int]:
    """The (weight, padding) to run the forward pass of a stride-1 'same' depthwise conv of ``x`` with.

    ``weight`` and ``padding`` themselves, or, where oneDNN is faster at the larger size (see the module doc),
    the kernel zero-padded to ``PADDED_KERNEL_SIZE`` with the matching padding: the same sums plus zeros.
    """
    size = weight.shape[-1]
    if (
        pads_kernel_size(size)
        and weight.shape[-2] == size
        and padding == size // 2
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and kernel_padding_enabled()
    ):
        border = (PADDED_KERNEL_SIZE - size) // 2
        return F.pad(weight, [border] * 4), padding + border
    return weight, padding


def dilated_to_dense(kernel: Tensor, dilation: int) -> Tensor:
    """A depthwise (C, 1, k, k) kernel with dilation r as the equivalent dense (r(k-1)+1)^2 kernel."""
    if dilation == 1:
        return kernel
    size = dilation * (kernel.shape[-1] - 1) + 1
    dense = kernel.new_zeros(*kernel.shape[:2], size, size)
    dense[..., ::dilation, ::dilation] = kernel
    return dense


def depthwise_weight_grad(x: Tensor, grad_out: Tensor, kernel_size: int, padding: int, dilation: int) -> Tensor:
    """Gradient of a stride-1 depthwise conv's (C, 1, k, k) weight, as one grouped correlation."""
    batch, channels = x.shape[:2]
    padded = F.pad(x, [padding] * 4)
    # (1, C*N, Hp, Wp) input correlated with (C*N, 1, H, W) kernels: one output (k, k) per channel and sample
    inputs = padded.transpose(0, 1).reshape(1, channels * batch, *padded.shape[2:])
    kernels = grad_out.transpose(0, 1).reshape(channels * batch, 1, *grad_out.shape[2:])
    per_sample = F.conv2d(inputs, kernels.to(inputs.dtype), stride=dilation, groups=channels * batch)
    return per_sample.reshape(channels, batch, kernel_size, kernel_size).sum(1).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        weight, padding = forward_kernel(x, weight, padding)  # the backward keeps the saved kernel's size
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, padding=ctx.padding, groups=x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape[-1], ctx.padding, 1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, dilation: int = 1) -> Tensor:
    """Stride-1 depthwise conv (``groups = channels``) of ``x`` (N, C, H, W) with a (C, 1, k, k) weight.

    Same result as ``F.conv2d``. On CPUs a dilated kernel runs as its dense equivalent, and the weight
    gradient of large kernels takes the fast correlation route; elsewhere it is PyTorch's own.
    """
    if x.device.type != "cpu":
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])
    weight = dilated_to_dense(weight, dilation)  # differentiable: its backward is a strided slice
    if needs_grad(weight) and weight.shape[-1] >= MIN_KERNEL_FOR_CORRELATION:
        return _DepthwiseConv2d.apply(x, weight, bias, padding)
    if not needs_grad(x, weight, bias):  # autograd through a padded kernel would slow both gradients
        weight, padding = forward_kernel(x, weight, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


def needs_grad(*tensors: Tensor | None) -> bool:
    """True when autograd records a gradient through any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
