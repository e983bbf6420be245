"""The CPU inference fusion ``overlock::softmax_av`` (logits from their factors, bias, softmax and weighted sum a
cache-sized block at a time) against the oracle: ``contmix_reference`` on the dense logits ``query @ key + bias``.
"""
from __future__ import annotations

import pytest
import torch

from overlock.ops import contmix_reference, relative_position_bias
from overlock.ops import cpu
from overlock.ops.custom_op import softmax_av
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
    """Logit factors (query a transposed view, as ContMix makes it), a value view, a bias table and the logits'
    own bias."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(b, g, q, h * w, generator=gen, dtype=dtype).transpose(-1, -2)
    key = torch.randn(b, g, q, k * k, generator=gen, dtype=dtype) / q**0.5
    bias = torch.randn(k * k, generator=gen, dtype=dtype)
    value = value_view(b, g, h, w, c, layout, gen, dtype)
    rpb = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype)
    return query, key, bias, value, rpb


def _total_bias(rpb, bias, h, w, k):
    return relative_position_bias(rpb, h, w, k).reshape(rpb.shape[0], h * w, k * k) + bias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
def test_fused_matches_reference(shape, budget, layout, monkeypatch):
    monkeypatch.setattr(cpu, "BAND_PER_BLOCK", budget)
    b, g, h, w, c, k, q = shape
    query, key, bias, value, rpb = _inputs(*shape, layout=layout)
    expected = contmix_reference((query @ key + bias).unflatten(2, (h, w)), value, k, rpb)
    out = softmax_av(query, key, _total_bias(rpb, bias, h, w, k), value, k)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert is_planar(out) == (layout == "planar")


def test_fused_kernel_memory_bounded(monkeypatch):
    """No intermediate outgrows a block's band buffer or the value: never the full weights, never a K^2 copy of
    the value (a 60x90 map with K = 7, 2 images of 2 groups: weights 1.06 M, value 0.35 M floats)."""
    monkeypatch.setattr(cpu, "BAND_PER_BLOCK", 1 << 18)  # well below the weights
    query, key, _, value, _ = _inputs(2, 2, 60, 90, 16, 7, 8, dtype=torch.float32)
    bias = torch.zeros(1, 60 * 90, 49)
    weights = 2 * 2 * 60 * 90 * 49
    with LargestTensor() as tracker:
        cpu.softmax_av_forward(query, key, bias, value, 7)
    assert tracker.largest <= max(cpu.BAND_PER_BLOCK, value.numel()) < weights


def test_fused_float32_relative_error():
    query, key, bias, value, rpb = _inputs(2, 4, 14, 14, 16, 13, 16)
    expected = contmix_reference((query @ key + bias).unflatten(2, (14, 14)), value, 13, rpb)
    out = softmax_av(query.float(), key.float(), _total_bias(rpb, bias, 14, 14, 13).float(), value.float(), 13)
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5


def test_fused_custom_op_registration():
    query, key, bias, value, rpb = _inputs(2, 2, 6, 9, 3, 5, 4, dtype=torch.float32)
    torch.library.opcheck(softmax_av, (query, key, _total_bias(rpb, bias, 6, 9, 5), value, 5))


def test_torch_compile_fullgraph():
    query, key, bias, value, rpb = _inputs(1, 2, 7, 8, 3, 5, 4, dtype=torch.float32)
    total = _total_bias(rpb, bias, 7, 8, 5)

    def fn(query, key, value):
        return softmax_av(query, key * 2, total, value, 5) + 1

    compiled = torch.compile(fn, fullgraph=True)(query, key, value)
    torch.testing.assert_close(compiled, fn(query, key, value))
