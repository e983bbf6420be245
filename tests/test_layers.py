"""Layers: Dilated RepConv re-parameterisation, ContMix block, small-map resizing, norms."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from overlock import ContMixBlock
from overlock.layers import DILATED_BRANCHES, DilatedRepConv, LayerNorm2d
from overlock.layers.contmix import upsized_for_kernel


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
def test_dilated_repconv_reparameterize_is_exact(kernel_size):
    torch.manual_seed(kernel_size)
    conv = DilatedRepConv(6, kernel_size).eval()
    _randomise_bn(conv, kernel_size)
    x = torch.randn(2, 6, 23, 19)
    with torch.no_grad():
        expected = conv(x)
        conv.reparameterize()
        merged = conv(x)
    assert conv.deployed and [n for n, _ in conv.named_children()] == ["lk_origin"]
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    deploy = DilatedRepConv(6, kernel_size, deploy=True)
    assert deploy.state_dict().keys() == conv.state_dict().keys()


def test_dilated_repconv_rejects_unsupported_kernel():
    with pytest.raises(ValueError, match="kernel sizes"):
        DilatedRepConv(4, 21)


@pytest.mark.parametrize(
    "h, w, k, expected",
    [(14, 14, 13, None), (2, 2, 13, (13, 13)), (2, 3, 13, (13, 19)), (4, 2, 7, (14, 7)), (13, 5, 7, (18, 7))],
)
def test_upsized_for_kernel(h, w, k, expected):
    assert upsized_for_kernel(h, w, k) == expected


def test_layernorm2d_normalises_channels():
    norm = LayerNorm2d(5)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 3, 4)
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("size", [(20, 24), (8, 8), (6, 15)])
def test_contmix_block_shapes_grads_and_reparam(size):
    torch.manual_seed(0)
    block = ContMixBlock(dim=32, kernel_size=13, num_heads=2, res_scale=True, ls_init_value=1.0)
    x = torch.randn(2, 32, *size, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.eval()
    _randomise_bn(block)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_contmix_block_rejects_indivisible_dim():
    with pytest.raises(ValueError, match="divisible"):
        ContMixBlock(dim=20, num_heads=2)


def test_contmix_block_checkpointing_gives_identical_grads():
    torch.manual_seed(0)
    plain = ContMixBlock(dim=16, kernel_size=7, num_heads=1, drop_path=0.0)
    ckpt = ContMixBlock(dim=16, kernel_size=7, num_heads=1, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    grads = []
    for block in (plain, ckpt):
        (out,) = torch.autograd.grad(block(x).square().sum(), x)
        grads.append(out)
    torch.testing.assert_close(grads[0], grads[1])


def test_contmix_block_custom_norm_layer():
    block = ContMixBlock(dim=16, kernel_size=7, num_heads=1, norm_layer=nn.BatchNorm2d)
    assert isinstance(block.norm1, nn.BatchNorm2d) and isinstance(block.norm2, nn.BatchNorm2d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_se_matches_its_conv_modules(channels_last):
    """SE computes its stored 1x1 convolutions as matrix products on the pooled vector: same values and
    gradients as running the modules on the 1x1 map."""
    from overlock.layers.se import SEModule

    torch.manual_seed(0)
    se = SEModule(24)
    x = torch.randn(3, 24, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    se = se.double()
    x.requires_grad_()
    expected = x * se.proj(x)
    out = se(x)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), [x, *se.parameters()])
    expected_grads = torch.autograd.grad(expected.sum(), [x, *se.parameters()])
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)
    with torch.no_grad():
        y = x.detach().clone()
        torch.testing.assert_close(se.rescale_(y), expected.detach())
        assert y.data_ptr() == se.rescale_(y).data_ptr()
