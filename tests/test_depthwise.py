"""The depthwise conv with the fast CPU weight gradient, and the identity-folded residual conv,
against PyTorch's own convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overlock.layers.conv import DepthwiseConv2d, ResDWConv
from overlock.ops.depthwise import (
    MIN_KERNEL_FOR_CORRELATION,
    depthwise_conv2d,
    depthwise_weight_grad,
    forward_kernel,
)


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


def _record_kernel_sizes(monkeypatch) -> list[int]:
    """Kernel sizes of the convolutions run from now on (PyTorch's, and oneDNN's with packed weights)."""
    sizes = []

    def spy(conv):
        def run(x, weight, *args, **kwargs):
            sizes.append(weight.shape[-1])
            return conv(x, weight, *args, **kwargs)
        return run

    monkeypatch.setattr(F, "conv2d", spy(F.conv2d))
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy(torch.ops.mkldnn._convolution_pointwise))
    return sizes


@pytest.mark.parametrize("kernel", [11, 13])
@pytest.mark.parametrize("height, width, batch", [(14, 14, 2), (5, 9, 1), (23, 16, 1)], ids=str)
@pytest.mark.parametrize("needs", ["none", "input", "input+weight"])
def test_slow_kernel_sizes_padded_to_15_give_the_same_conv(monkeypatch, kernel, height, width, batch, needs):
    """Forced on (any CPU), 13x13 forward passes run as 15x15 kernels with a zero border, with the same outputs
    and gradients; where autograd would see the padded kernel, and for other sizes, kernels are left alone."""
    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "on")
    gen = torch.Generator().manual_seed(kernel + height)
    x = torch.randn(batch, 6, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 1, kernel, kernel, generator=gen), torch.randn(6, generator=gen)
    x.requires_grad_(needs != "none")
    w.requires_grad_(needs == "input+weight")
    expected = F.conv2d(x, w, b, padding=kernel // 2, groups=6)
    sizes = _record_kernel_sizes(monkeypatch)
    ours = depthwise_conv2d(x, w, b, kernel // 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # no gradient, or the custom-autograd path (13 with a weight gradient): padded; plain autograd: as given
    padded = kernel == 13 and (needs == "none" or (needs == "input+weight" and kernel >= MIN_KERNEL_FOR_CORRELATION))
    assert sizes == [15 if padded else kernel]
    if needs != "none":
        grad_out = torch.randn(expected.shape, generator=gen)
        inputs = [x, w] if w.requires_grad else [x]
        for g_ours, g_ref in zip(
            torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(expected, inputs, grad_out)
        ):
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)
            assert g_ours.shape == g_ref.shape


def test_padding_choice(monkeypatch):
    x = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    w13, w9 = torch.randn(4, 1, 13, 13), torch.randn(4, 1, 9, 9)
    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "on")
    weight, padding = forward_kernel(x, w13, 6)
    assert weight.shape[-2:] == (15, 15) and padding == 7
    torch.testing.assert_close(weight[..., 1:-1, 1:-1], w13, rtol=0, atol=0)
    assert weight[..., 0, :].abs().sum() == weight[..., :, -1].abs().sum() == 0
    for args in [(x, w9, 4), (x.contiguous(), w13, 6), (x.double(), w13.double(), 6), (x, w13, 5)]:
        weight, padding = forward_kernel(*args)  # other sizes, NCHW maps, float64, not 'same': unchanged
        assert weight is args[1] and padding == args[2]
    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "off")
    assert forward_kernel(x, w13, 6)[0] is w13
    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "auto")  # by oneDNN's instruction set
    for capability, isa_limit, padded in [("AVX512", None, True), ("AVX512", "AVX2", False), ("AVX2", None, False),
                                          ("AVX512", "avx512_core", True)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        if isa_limit is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_limit)
        assert (forward_kernel(x, w13, 6)[0].shape[-1] == 15) == padded, (capability, isa_limit)
    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "sometimes")
    with pytest.raises(ValueError, match="OVERLOCK_DEPTHWISE_PAD must be 'auto', 'on' or 'off', got 'sometimes'"):
        forward_kernel(x, w13, 6)


def test_deploy_form_sequence_pads_its_merged_kernel(monkeypatch):
    """The merged 13x13 Dilated RepConv with its BatchNorm folded in, as the blocks run it in inference."""
    from overlock.layers.conv import DilatedRepConv
    from overlock.layers.fused import FusedSequential

    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "on")
    torch.manual_seed(0)
    seq = FusedSequential(DilatedRepConv(8, 13), torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        for p in seq.parameters():
            p.normal_()
    seq.eval()
    x = torch.randn(2, 8, 14, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = seq[1](seq[0](x))  # layer by layer: branches, BNs, the original 13x13 kernel
        seq[0].reparameterize()
        sizes = _record_kernel_sizes(monkeypatch)
        out = seq(x)
    assert sizes == [15]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
