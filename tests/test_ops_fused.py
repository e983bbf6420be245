"""The CPU inference fusion (bias, softmax and weighted sum a cache-sized block at a time) against the oracle.

``contmix_apply`` takes it when no gradient is needed on the CPU backend, from dense logits or from their
factors (``LowRankLogits``); ``contmix_reference`` on the dense logits is the expectation.
"""
from __future__ import annotations

import pytest
import torch

from overlock.ops import LowRankLogits, contmix_apply, contmix_reference
from overlock.ops import cpu
from overlock.ops.custom_op import softmax_av_cpu
from overlock.ops.layout import is_planar
from probes import LargestTensor, value_view

SHAPES = [  # (B, G, H, W, C, K, c): c channels of query and key
    (1, 1, 3, 3, 1, 3, 1),  # map exactly the kernel
    (2, 2, 5, 8, 3, 5, 4),
    (1, 3, 9, 6, 64, 5, 7),  # 64 channels a group
    (1, 2, 21, 11, 5, 9, 3),  # taller than wide
    (3, 2, 14, 14, 4, 13, 16),  # the XT stage-3 map: border rows grouped
    (1, 2, 13, 40, 7, 13, 5),  # the detection aspect, large kernel
    (1, 1, 101, 19, 2, 3, 2),  # more than 100 rows
    (2, 1, 12, 104, 3, 11, 6),  # more than 100 columns
    (1, 1, 17, 17, 2, 17, 3),
]
# band buffer of a block: one row at a time, a few rows or whole maps of a few images at a time, the default
BUDGETS = [1, 5_000, 20_000, 150_000, cpu.BAND_PER_BLOCK]


def _inputs(b, g, h, w, c, k, q, layout="planar", dtype=torch.float64, seed=0):
    """Low-rank logits (query a transposed view, as ContMixMixer makes it), a value view, a bias table."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(b, g, q, h * w, generator=gen, dtype=dtype).transpose(-1, -2)
    key = torch.randn(b, g, q, k * k, generator=gen, dtype=dtype) / q**0.5
    bias = torch.randn(k * k, generator=gen, dtype=dtype)
    value = value_view(b, g, h, w, c, layout, gen, dtype)
    rpb = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype)
    return LowRankLogits(query, key, bias), value, rpb


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of the fused kernel."""
    calls = []
    kernel = cpu.softmax_av_forward

    def counting(*args):
        calls.append(args[-1])
        return kernel(*args)

    monkeypatch.setattr(cpu, "softmax_av_forward", counting)
    return calls


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
def test_fused_matches_reference(shape, budget, layout, monkeypatch, fused_calls):
    monkeypatch.setattr(cpu, "BAND_PER_BLOCK", budget)
    b, g, h, w, c, k, q = shape
    logits, value, rpb = _inputs(*shape, layout=layout)
    dense = logits.dense(h, w)
    expected = contmix_reference(dense, value, k, rpb)
    with torch.no_grad():
        from_factors = contmix_apply(logits, value, k, rpb, backend="cpu")
        from_dense = contmix_apply(dense, value, k, rpb, backend="cpu")
    assert len(fused_calls) == 2
    torch.testing.assert_close(from_factors, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(from_dense, expected, rtol=1e-10, atol=1e-10)
    assert is_planar(from_factors) == is_planar(from_dense) == (layout == "planar")


def test_fused_kernel_memory_bounded(monkeypatch):
    """From factors, no intermediate outgrows a block's band buffer or the value: never the full weights, never a
    K^2 copy of the value (a 60x90 map with K = 7, 2 images of 2 groups: weights 1.06 M, value 0.35 M floats)."""
    monkeypatch.setattr(cpu, "BAND_PER_BLOCK", 1 << 18)  # well below the weights
    logits, value, _ = _inputs(2, 2, 60, 90, 16, 7, 8, dtype=torch.float32)
    bias = torch.zeros(1, 60 * 90, 49).expand(2, -1, -1)
    weights = 2 * 2 * 60 * 90 * 49
    with LargestTensor() as tracker:
        cpu.softmax_av_forward(None, logits.query, logits.key, bias, value, 7)
    assert tracker.largest <= max(cpu.BAND_PER_BLOCK, value.numel()) < weights


def test_fused_without_bias_tables(fused_calls):
    logits, value, _ = _inputs(2, 2, 7, 9, 3, 5, 4)
    logits = logits._replace(bias=None)
    with torch.no_grad():
        out = contmix_apply(logits, value, 5, backend="cpu")
    assert fused_calls
    torch.testing.assert_close(out, contmix_reference(logits.dense(7, 9), value, 5), rtol=1e-10, atol=1e-10)


def test_fused_float32_relative_error():
    logits, value, rpb = _inputs(2, 4, 14, 14, 16, 13, 16)
    expected = contmix_reference(logits.dense(14, 14), value, 13, rpb)
    with torch.no_grad():
        out = contmix_apply(LowRankLogits(*(t.float() for t in logits)), value.float(), 13, rpb.float())
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5


def test_gradients_take_the_unfused_path(fused_calls):
    """Anything that needs a gradient goes through the differentiable custom op, with correct gradients."""
    logits, value, rpb = _inputs(1, 2, 6, 7, 3, 5, 4)
    query = logits.query.detach().requires_grad_()
    out = contmix_apply(logits._replace(query=query), value, 5, rpb, backend="cpu")
    (grad,) = torch.autograd.grad(out.sum(), query)
    query_ref = logits.query.detach().requires_grad_()
    expected = contmix_reference(logits._replace(query=query_ref).dense(6, 7), value, 5, rpb)
    (grad_ref,) = torch.autograd.grad(expected.sum(), query_ref)
    assert not fused_calls
    torch.testing.assert_close(grad, grad_ref)


def test_other_backends_are_not_fused(fused_calls):
    logits, value, rpb = _inputs(1, 1, 5, 5, 2, 3, 2)
    with torch.no_grad():
        out = contmix_apply(logits, value, 3, rpb, backend="reference")
    assert not fused_calls
    torch.testing.assert_close(out, contmix_reference(logits.dense(5, 5), value, 3, rpb))


def test_low_rank_shape_errors():
    logits, value, rpb = _inputs(1, 2, 6, 7, 3, 5, 4)
    with pytest.raises(ValueError, match="do not fit value"):
        contmix_apply(logits._replace(key=logits.key[..., :9]), value, 5, rpb)
    with pytest.raises(ValueError, match="do not fit value"):
        contmix_apply(logits._replace(query=logits.query[:, :, :-1]), value, 5, rpb)
    with pytest.raises(ValueError, match="bias must have shape"):
        contmix_apply(logits._replace(bias=logits.bias[:3]), value, 5, rpb)
    with pytest.raises(ValueError, match="expected query"):
        contmix_apply(logits._replace(query=logits.query[0]), value, 5, rpb)
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        contmix_apply(logits, value, 7, rpb)
    with pytest.raises(ValueError, match="rpb must have shape"):
        contmix_apply(logits, value, 5, rpb[:1])


def test_fused_custom_op_registration():
    logits, value, rpb = _inputs(2, 2, 6, 9, 3, 5, 4, dtype=torch.float32)
    bias = torch.randn(2, 54, 25)
    torch.library.opcheck(softmax_av_cpu, (None, logits.query, logits.key, bias, value, 5))
    torch.library.opcheck(softmax_av_cpu, (logits.dense(6, 9).flatten(2, 3), None, None, bias, value, 5))


def test_torch_compile_fullgraph_inference(fused_calls):
    logits, value, rpb = _inputs(1, 2, 7, 8, 3, 5, 4, dtype=torch.float32)

    def fn(query, key, value):
        return contmix_apply(LowRankLogits(query, key * 2, logits.bias), value, 5, rpb) + 1

    with torch.no_grad():
        compiled = torch.compile(fn, fullgraph=True)(logits.query, logits.key, value)
        expected = fn(logits.query, logits.key, value)
    assert fused_calls
    torch.testing.assert_close(compiled, expected)
