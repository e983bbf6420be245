"""The depthwise convolution op (fast CPU weight gradient; dilated kernels as PyTorch runs them) and the residual
depthwise conv, against PyTorch's own convolution; the kernel padding the inference conversion uses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overlock.layers.conv import DepthwiseConv2d, ResDWConv
from overlock.ops.depthwise import correlation_weight_grad, depthwise_conv2d, padded_for_speed


@pytest.mark.parametrize(
    "batch, channels, height, width, kernel, dilation",
    [(2, 4, 20, 17, 7, 1), (1, 3, 16, 16, 15, 1), (3, 2, 19, 24, 17, 1), (2, 5, 23, 21, 7, 2), (1, 2, 30, 28, 9, 2),
     (1, 3, 25, 22, 3, 7), (1, 2, 14, 11, 13, 1)],
    ids=str,
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_match_conv2d(batch, channels, height, width, kernel, dilation, channels_last, bias):
    gen = torch.Generator().manual_seed(kernel * 10 + dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, height, width, generator=gen).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(channels, 1, kernel, kernel, generator=gen, requires_grad=True)
    b = torch.randn(channels, generator=gen, requires_grad=True) if bias else None
    pad = dilation * (kernel - 1) // 2
    grad_out = torch.randn(batch, channels, height, width, generator=gen)

    ours = depthwise_conv2d(x, w, b, pad, dilation)
    expected = F.conv2d(x, w, b, padding=pad, dilation=dilation, groups=channels)
    torch.testing.assert_close(ours, expected)
    assert ours.is_contiguous(memory_format=fmt)
    inputs = [t for t in (x, w, b) if t is not None]
    for g_ours, g_ref in zip(torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 17, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 15, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: depthwise_conv2d(x, w, None, 7, 1), (x, w), fast_mode=True)
    w_dilated = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: depthwise_conv2d(x, w, None, 6, 6), (x, w_dilated), fast_mode=True)


def test_weight_grad_formula_on_a_known_case():
    # one channel, one sample, all-ones input and output gradient: each tap sees the number of output positions
    # whose shifted input position falls inside the (unpadded) map
    x, g = torch.ones(1, 1, 9, 9), torch.ones(1, 1, 9, 9)
    grad = correlation_weight_grad(x, g, kernel_size=7, padding=3)[0, 0]
    overlap = torch.tensor([9 - abs(a - 3) for a in range(7)], dtype=torch.float32)
    torch.testing.assert_close(grad, overlap[:, None] * overlap[None, :])


def test_custom_op_registration():
    x = torch.randn(2, 4, 12, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    for kernel, dilation in [(13, 1), (3, 2)]:
        w = torch.randn(4, 1, kernel, kernel, requires_grad=True)
        torch.library.opcheck(depthwise_conv2d, (x, w, None, dilation * (kernel - 1) // 2, dilation))


def test_module_keeps_conv2d_parameters_and_output():
    conv = DepthwiseConv2d(6, 13, bias=True)
    assert conv.padding == (6, 6) and conv.groups == 6 and set(conv.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 6, 15, 15)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=6, groups=6))


def test_residual_dwconv_and_its_folded_kernel():
    conv = ResDWConv(8, 3)
    x = torch.randn(2, 8, 10, 12)
    expected = x + F.conv2d(x, conv.weight, conv.bias, padding=1, groups=8)
    assert torch.equal(conv(x), expected)
    folded = F.conv2d(x, conv.kernel(), conv.bias, padding=1, groups=8)
    torch.testing.assert_close(folded, expected, rtol=1e-6, atol=1e-6)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_padded_kernel_choice(monkeypatch):
    """13x13 kernels are padded to 15x15 with a zero border where oneDNN runs AVX-512 code, never elsewhere."""
    w13, w9 = torch.randn(4, 1, 13, 13), torch.randn(4, 1, 9, 9)
    for capability, isa_limit, padded in [("AVX512", None, True), ("AVX512", "AVX2", False), ("AVX2", None, False),
                                          ("AVX512", "avx512_core", True)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        if isa_limit is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_limit)
        weight = padded_for_speed(w13)
        assert (weight.shape[-1] == 15) == padded, (capability, isa_limit)
        assert padded_for_speed(w9) is w9
        if padded:
            assert torch.equal(weight[..., 1:-1, 1:-1], w13) and weight[..., 0, :].abs().sum() == 0
            x = torch.randn(2, 4, 14, 11).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(F.conv2d(x, weight, padding=7, groups=4), F.conv2d(x, w13, padding=6, groups=4),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_runs_in_the_autocast_dtype(dtype):
    """As PyTorch's own convolution: float32 inputs and weights computed in the autocast dtype, gradients back."""
    x = torch.randn(2, 4, 12, 10, requires_grad=True)
    w = torch.randn(4, 1, 13, 13, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        ours = depthwise_conv2d(x, w, None, 6, 1)
        expected = F.conv2d(x, w, padding=6, groups=4)
    assert ours.dtype == expected.dtype == dtype
    torch.testing.assert_close(ours, expected)
    ours.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32
