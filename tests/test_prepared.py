"""Prepared (folded, packed) convolution weights in CPU inference: same outputs, remade whenever a source changes."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from overlock.layers import RepConvBlock, prepared
from overlock.layers.conv import DilatedRepConv, ResDWConv
from overlock.layers.fused import FusedSequential
from overlock.layers.prepared import PACK_ENV_VAR, PreparedWeights

needs_packing = pytest.mark.skipif(
    not prepared._ONEDNN_PACKING, reason="packed oneDNN weights need an x86 PyTorch build with oneDNN"
)
CL = torch.channels_last


def _randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif not name.endswith(("num_batches_tracked", "identity")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
    return module.eval()


def _stack() -> FusedSequential:
    """Every kind of convolution a FusedSequential prepares: conv-BN-GELU (strided), residual depthwise conv,
    a merged 13x13 Dilated RepConv with its BN (padded to 15x15 on AVX-512), BN then 1x1 conv, a plain 1x1."""
    rep = DilatedRepConv(8, 13)
    _randomised(rep, seed=1).reparameterize()
    return _randomised(FusedSequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(),
        ResDWConv(8, 3),
        rep, nn.BatchNorm2d(8),
        nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1),
        nn.Conv2d(6, 5, 1),
    ))


def _unprepared(module: nn.Module, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m, torch.no_grad():
        m.setenv(PACK_ENV_VAR, "off")
        return module(x)


def _caches(module: nn.Module) -> list[PreparedWeights]:
    return [m.prepared for m in module.modules() if isinstance(getattr(m, "prepared", None), PreparedWeights)]


@needs_packing
def test_prepared_stack_matches_the_layers_and_is_reused(monkeypatch):
    seq = _stack()
    x = torch.randn(2, 3, 30, 27).contiguous(memory_format=CL)
    expected = _unprepared(seq, x, monkeypatch)
    assert len(seq.prepared) == 0  # turned off: nothing prepared
    reorders = []
    real = torch.ops.mkldnn._reorder_convolution_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", lambda *a: reorders.append(1) or real(*a))
    with torch.no_grad():
        first = seq(x)
        second = seq(torch.cat([x, x]).contiguous(memory_format=CL))  # another batch size: the same weights
    assert len(seq.prepared) == 5 and len(reorders) == 5 and len(seq[3].prepared) == 0
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, torch.cat([expected, expected]), rtol=1e-5, atol=1e-5)


@needs_packing
def test_standalone_residual_dwconv_and_repconv_block(monkeypatch):
    block = _randomised(RepConvBlock(16, 13))
    block.proj[1].reparameterize()  # the deploy form
    for module in (_randomised(ResDWConv(16, 3)), block):
        x = torch.randn(2, 16, 14, 15).contiguous(memory_format=CL)
        expected = _unprepared(module, x, monkeypatch)
        with torch.no_grad():
            out = module(x)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert sum(len(cache) for cache in _caches(module)) > 0


@needs_packing
@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "new_data", "running_stats", "bn_eps"])
def test_prepared_weights_follow_their_sources(change, monkeypatch):
    seq = _stack()
    x = torch.randn(1, 3, 20, 20).contiguous(memory_format=CL)
    with torch.no_grad():
        seq(x)
        if change == "in_place":
            seq[0].weight.mul_(-2)
            seq[3].weight.add_(1)
        elif change == "load_state_dict":
            seq.load_state_dict(_randomised(_stack(), seed=5).state_dict())
        elif change == "new_data":
            seq[7].weight.data = torch.randn_like(seq[7].weight)
        elif change == "running_stats":
            seq[5].running_mean.add_(3)
            seq[6].running_var.mul_(4)
        else:
            seq[1].eps = 0.5
        out = seq(x)
    torch.testing.assert_close(out, _unprepared(seq, x, monkeypatch), rtol=1e-5, atol=1e-5)


@needs_packing
def test_copies_pickles_casts_and_gradients(monkeypatch):
    seq = _stack()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = seq(x)
    assert len(seq.prepared) > 0
    for clone in (copy.deepcopy(seq), pickle.loads(pickle.dumps(seq))):
        assert all(len(cache) == 0 for cache in _caches(clone))
        with torch.no_grad():
            torch.testing.assert_close(clone(x), expected)
    seq.double()  # casting empties every cache; float64 is not prepared
    assert all(len(cache) == 0 for cache in _caches(seq))
    with torch.no_grad():
        torch.testing.assert_close(seq(x.double()), expected.double(), rtol=1e-5, atol=1e-5)
    assert all(len(cache) == 0 for cache in _caches(seq))
    seq.float()
    out = seq(x)  # parameters need gradients: the layers as they are, differentiable
    assert out.requires_grad and len(seq.prepared) == 0
    out.sum().backward()
    assert seq[0].weight.grad is not None


@needs_packing
def test_count_macs_sees_the_kernels_as_given_after_padded_inference(monkeypatch):
    """A 13x13 kernel prepared padded to 15x15 for inference is prepared again at 13x13 to be counted."""
    from overlock.analysis import count_macs

    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "on")
    rep = DilatedRepConv(8, 13)
    rep.eval().reparameterize()
    seq = FusedSequential(rep, nn.BatchNorm2d(8)).eval()
    x = torch.randn(1, 8, 14, 14).contiguous(memory_format=CL)
    with torch.no_grad():
        seq(x)
    assert count_macs(seq, (8, 14, 14)) == 8 * 14 * 14 * 13 * 13


@needs_packing
def test_unknown_setting_is_named(monkeypatch):
    monkeypatch.setenv(PACK_ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="OVERLOCK_PACKED_WEIGHTS must be 'auto' or 'off', got 'sometimes'"), \
            torch.no_grad():
        _stack()(torch.randn(1, 3, 8, 8).contiguous(memory_format=CL))


def test_cache_entries_are_remade_when_a_source_or_extra_changes():
    """The cache's own rule, independent of oneDNN."""
    cache, made = PreparedWeights(), []
    a, b = torch.zeros(3), torch.ones(2)

    def build():
        made.append(1)
        return len(made)

    assert cache.get("k", (a, None, b), 0, build) == 1
    assert cache.get("k", (a, None, b), 0, build) == 1  # unchanged: kept
    a.add_(1)  # an in-place write bumps the version
    assert cache.get("k", (a, None, b), 0, build) == 2
    assert cache.get("k", (a, None, b), 1, build) == 3  # another extra
    assert cache.get("k", (a, None, torch.ones(2)), 1, build) == 4  # another storage
    assert cache.get("other", (a,), 1, build) == 5 and len(cache) == 2
    cache.clear()
    assert len(cache) == 0
