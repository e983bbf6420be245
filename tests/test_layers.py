"""Layers: Dilated RepConv re-parameterisation, ContMix block, small-map resizing, norms."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from overlock import ContMixBlock
from overlock.layers import DILATED_BRANCHES, DilatedRepConv, LayerNorm2d
from overlock.layers.contmix import ContMix, pool_to_size_of, resize_for_kernel


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
    assert [n for n, _ in conv.named_children()] == ["lk_origin"] and conv.lk_origin.bias is not None
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    deploy = DilatedRepConv(6, kernel_size, deploy=True)
    assert deploy.state_dict().keys() == conv.state_dict().keys()


def test_dilated_repconv_rejects_unsupported_kernel():
    with pytest.raises(ValueError, match="kernel sizes"):
        DilatedRepConv(4, 21)


@pytest.mark.parametrize(
    "h, w, k, expected",
    [(14, 14, 13, (14, 14)), (2, 2, 13, (13, 13)), (2, 3, 13, (13, 19)), (4, 2, 7, (14, 7)), (13, 5, 7, (18, 7))],
)
def test_small_maps_resized_for_the_kernel_and_pooled_back(h, w, k, expected):
    """The official rule: the shorter side becomes K, the other keeps the aspect ratio, truncated."""
    x = torch.randn(1, 2, h, w)
    up = resize_for_kernel(x, k)
    assert tuple(up.shape[-2:]) == expected and (up is x) == ((h, w) == expected)
    back = pool_to_size_of(up, x)
    assert back.shape == x.shape and (back is up) == ((h, w) == expected)


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


def test_contmix_block_custom_norm_layer():
    block = ContMixBlock(dim=16, kernel_size=7, num_heads=1, norm_layer=nn.BatchNorm2d)
    assert isinstance(block.norm1, nn.BatchNorm2d) and isinstance(block.norm2, nn.BatchNorm2d)


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
def test_contmix_module_backends_agree(backend):
    """ContMix's mixing with each backend against the reference, values and gradients."""
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(2, 16, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 8, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    key = torch.randn(2, 8, 7, 7, generator=gen, dtype=torch.float64)
    proj = torch.randn(25 + 49, 49, 1, 1, generator=gen, dtype=torch.float64) * 0.1
    bias = torch.randn(25 + 49, generator=gen, dtype=torch.float64)
    rpb_small = torch.randn(4, 9, 9, generator=gen, dtype=torch.float64)
    rpb_large = torch.randn(4, 13, 13, generator=gen, dtype=torch.float64)
    args = (value, query, key, proj, bias, rpb_small, rpb_large)
    ours = ContMix(7, 5, 4, backend)(*args)
    expected = ContMix(7, 5, 4, "reference")(*args)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(ours.square().sum(), (value, query))
    expected_grads = torch.autograd.grad(expected.square().sum(), (value, query))
    for a, e in zip(grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="unknown ContMix backend 'fast'"):
        ContMix(7, 5, 4, "fast")
