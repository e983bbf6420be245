"""The depthwise conv with the fast CPU weight gradient, and the identity-folded residual conv,
against PyTorch's own convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overlock.layers.conv import DepthwiseConv2d, ResDWConv
from overlock.ops.depthwise import depthwise_conv2d, depthwise_weight_grad


@pytest.mark.parametrize(
    "batch, channels, height, width, kernel, dilation",
    [(2, 4, 20, 17, 7, 1), (1, 3, 16, 16, 15, 1), (3, 2, 19, 24, 17, 1), (2, 5, 23, 21, 7, 2), (1, 2, 30, 28, 9, 2), (1, 3, 25, 22, 3, 7)],
    ids=str,
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_match_conv2d(batch, channels, height, width, kernel, dilation, channels_last, bias):
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
    inputs = [t for t in (x, w, b) if t is not None]
    for g_ours, g_ref in zip(torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)


def test_weight_grad_gradcheck_float64():
    x = torch.randn(2, 3, 17, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 15, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: depthwise_conv2d(x, w, None, 7), (x, w), fast_mode=True)
    w_dilated = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: depthwise_conv2d(x, w, None, 6, dilation=6), (x, w_dilated), fast_mode=True
    )


def test_weight_grad_formula_on_a_known_case():
    # one channel, one sample, all-ones input and output gradient: each tap sees the number of
    # output positions whose shifted input position falls inside the (unpadded) map
    x, g = torch.ones(1, 1, 9, 9), torch.ones(1, 1, 9, 9)
    grad = depthwise_weight_grad(x, g, kernel_size=7, padding=3, dilation=1)[0, 0]
    overlap = torch.tensor([9 - abs(a - 3) for a in range(7)], dtype=torch.float32)
    torch.testing.assert_close(grad, overlap[:, None] * overlap[None, :])


def test_module_keeps_conv2d_parameters_and_output():
    conv = DepthwiseConv2d(6, 13, bias=True)
    assert conv.padding == (6, 6) and conv.groups == 6 and set(conv.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 6, 15, 15)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=6, groups=6))


def test_residual_dwconv_folds_identity_exactly():
    conv = ResDWConv(8, 3)
    x = torch.randn(2, 8, 10, 12)
    expected = x + F.conv2d(x, conv.weight, conv.bias, padding=1, groups=8)
    torch.testing.assert_close(conv(x), expected, rtol=1e-6, atol=1e-6)
    assert set(conv.state_dict()) == {"weight", "bias"}  # the folded identity is not a parameter
