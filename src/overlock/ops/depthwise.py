"""Stride-1 'same' depthwise convolution as the custom op ``overlock::depthwise_conv2d``.

The forward pass is PyTorch's convolution; what the op adds is speed on CPUs, with the same sums: the weight
gradient of a large kernel (13x13 and up) is computed as one grouped correlation. For channel ``c``,
``dW[c, a, b] = sum_{n, i, j} x_pad[n, c, i + a, j + b] * dy[n, c, i, j]``: the padded input correlated with the
output gradient used as an (H x W) kernel, one group per (channel, sample). PyTorch's generic CPU weight gradient
takes 2-5x longer for 13x13 to 17x17 kernels (``python benchmarks/depthwise_grad.py``).

On other devices the op runs PyTorch's own convolution and gradients. Registered with a fake kernel and an
autograd formula, so it traces, scripts, compiles and exports as one node.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

# from this kernel size on, the correlation route computes the CPU weight gradient
MIN_KERNEL_FOR_CORRELATION = 13


def dilated_to_dense(kernel: Tensor, dilation: int) -> Tensor:
    """A depthwise (C, 1, k, k) kernel with dilation r as the equivalent dense (r(k-1)+1)^2 kernel."""
    if dilation == 1:
        return kernel
    size = dilation * (kernel.shape[-1] - 1) + 1
    dense = kernel.new_zeros(*kernel.shape[:2], size, size)
    dense[..., ::dilation, ::dilation] = kernel
    return dense


def _output_format(x: Tensor) -> torch.memory_format:
    """The layout the convolution's output takes: channels-last for channels-last inputs, else contiguous."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


@torch.library.custom_op("overlock::depthwise_conv2d", mutates_args=())
def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, dilation: int) -> Tensor:
    """Depthwise convolution of ``x`` (N, C, H, W) with a (C, 1, k, k) ``weight``, stride 1."""
    out = F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])
    return out.contiguous(memory_format=_output_format(x))


@depthwise_conv2d.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, dilation: int) -> Tensor:
    span = dilation * (weight.shape[-1] - 1)
    shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * padding - span, x.shape[3] + 2 * padding - span)
    return x.new_empty(shape).contiguous(memory_format=_output_format(x))


def correlation_weight_grad(x: Tensor, grad_out: Tensor, kernel_size: int, padding: int) -> Tensor:
    """Gradient of a stride-1 depthwise conv's (C, 1, k, k) weight, as one grouped correlation."""
    batch, channels = x.shape[:2]
    padded = F.pad(x, [padding] * 4)
    # (1, C*N, Hp, Wp) input correlated with (C*N, 1, H, W) kernels: one (k, k) output per channel and sample
    inputs = padded.transpose(0, 1).reshape(1, channels * batch, *padded.shape[2:])
    kernels = grad_out.transpose(0, 1).reshape(channels * batch, 1, *grad_out.shape[2:])
    per_sample = F.conv2d(inputs, kernels.to(inputs.dtype), groups=channels * batch)
    return per_sample.reshape(channels, batch, kernel_size, kernel_size).sum(1).unsqueeze(1)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None


def _backward(ctx, grad_out: Tensor):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = grad_b = None
    big = x.device.type == "cpu" and ctx.dilation == 1 and weight.shape[-1] >= MIN_KERNEL_FOR_CORRELATION
    if need_x or (need_w and not big):
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1], [ctx.padding] * 2, [ctx.dilation] * 2, False, [0, 0], x.shape[1],
            [need_x, need_w and not big, False],
        )
    if need_w and big:
        grad_w = correlation_weight_grad(x, grad_out, weight.shape[-1], ctx.padding).to(weight.dtype)
    if ctx.has_bias and need_b:
        grad_b = grad_out.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None, None


depthwise_conv2d.register_autograd(_backward, setup_context=_setup_context)


def _autocast_kernel(device_type: str, key: torch._C.DispatchKey):
    """Under autocast, the convolution runs in the autocast dtype, as PyTorch's own convolutions do
    (``torch.library.register_autocast`` would fix one dtype for every autocast region)."""

    def kernel(_, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, dilation: int) -> Tensor:
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t: Tensor | None) -> Tensor | None:
            eligible = t is not None and t.is_floating_point() and t.device.type == device_type
            return t.to(dtype) if eligible and t.dtype != torch.float64 else t

        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return depthwise_conv2d(cast(x), cast(weight), cast(bias), padding, dilation)

    return kernel


_AUTOCAST_LIBRARY = torch.library.Library("overlock", "IMPL")
for _device_type in ("cpu", "cuda"):
    if torch._C._is_autocast_available(_device_type):
        _key_name = "Autocast" + torch._C._dispatch_key_for_device(_device_type)
        _AUTOCAST_LIBRARY.impl(
            "depthwise_conv2d", _autocast_kernel(_device_type, getattr(torch._C.DispatchKey, _key_name)), _key_name,
            with_keyset=True,
        )


# oneDNN's AVX-512 depthwise forward kernel is 2-3x slower at 13x13 than at 15x15 (``python
# benchmarks/depthwise_kernel_sizes.py``); limited to AVX2 it is the other way round
SLOW_KERNEL_SIZES = (13,)
PADDED_KERNEL_SIZE = 15


def onednn_uses_avx512() -> bool:
    """True on AVX-512 CPUs unless oneDNN is limited to an older instruction set (``ONEDNN_MAX_CPU_ISA``)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and limit.startswith(("ALL", "AVX512", "AVX10"))


def padded_for_speed(weight: Tensor) -> Tensor:
    """A stride-1 'same' depthwise kernel that oneDNN runs slowly on this CPU, zero-padded to a size it runs fast
    (the same sums plus exact zeros); other kernels as they are. For inference conversions, decided once."""
    size = weight.shape[-1]
    if size in SLOW_KERNEL_SIZES and weight.shape[-2] == size and onednn_uses_avx512():
        return F.pad(weight, [(PADDED_KERNEL_SIZE - size) // 2] * 4)
    return weight
