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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# PyTorch's CPU weight gradient falls off a cliff from 15x15 kernels on (measured, 2 cores, batch 8:
# 0.08-0.12 s at 13x13, 1.2-3.7 s at 15x15 on 28x28-56x56 maps); ours is level with it at 13x13 on
# 28x28-56x56 maps and 2-3x faster on 14x14 maps, slower below 13
MIN_KERNEL_FOR_CORRELATION = 13


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
    if weight.requires_grad and torch.is_grad_enabled() and weight.shape[-1] >= MIN_KERNEL_FOR_CORRELATION:
        return _DepthwiseConv2d.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])
