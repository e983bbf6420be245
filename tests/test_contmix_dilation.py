"""Dilated ContMix kernels (NATTEN's dilation): the reference against a brute-force loop written from NATTEN's
window formulas, and every backend's dilated form (``contmix_apply(..., dilation=d)``) against the reference."""
from __future__ import annotations

import pytest
import torch

from overlock.ops import available_backends, contmix_apply, contmix_reference, neighbour_indices
from probes import value_view

CPU_BACKENDS = available_backends(torch.empty(1, 1, 1, 1, 1))


def natten_window_start(i: int, length: int, k: int, d: int) -> int:
    """NATTEN's ``get_window_start`` for dilation d > 1, as its CUDA/CPU kernels write it (case by case)."""
    half = k // 2
    if i - half * d < 0:
        return i % d
    if i + half * d >= length:
        imodd = i % d
        a = (length // d) * d
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * half * d
        return a + imodd - k * d
    return i - half * d


def natten_bias_start(i: int, length: int, k: int, d: int) -> int:
    """NATTEN's ``get_pb_start`` for dilation d > 1: the bias row of a query's first neighbour."""
    half = k // 2
    if i - half * d < 0:
        return k - 1 - i // d
    if i + half * d >= length:
        return (length - i - 1) // d
    return half


def brute_force(logits, value, k, d, rpb=None):
    """Every query and neighbour in a loop: neighbours ``start + n * d``, bias ``rpb[bias_start + n]``."""
    b_, g_, h_, w_, _ = value.shape
    out = torch.zeros_like(value)
    for b in range(b_):
        for g in range(g_):
            for i in range(h_):
                si, pi = natten_window_start(i, h_, k, d), natten_bias_start(i, h_, k, d)
                for j in range(w_):
                    sj, pj = natten_window_start(j, w_, k, d), natten_bias_start(j, w_, k, d)
                    scores = logits[b, g, i, j].clone()
                    if rpb is not None:
                        for a in range(k):
                            for c in range(k):
                                scores[a * k + c] += rpb[g, pi + a, pj + c]
                    weights = scores.softmax(-1)
                    for a in range(k):
                        for c in range(k):
                            out[b, g, i, j] += weights[a * k + c] * value[b, g, si + a * d, sj + c * d]
    return out


def _inputs(b, g, h, w, c, k, layout="contiguous", dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, g, h, w, k * k, generator=gen, dtype=dtype)
    value = value_view(b, g, h, w, c, layout, gen, dtype)
    rpb = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype)
    return logits, value, rpb


# (B, G, H, W, C, K, dilation): sides that are and are not multiples of the dilation, maps of exactly K * d
SHAPES = [
    (1, 1, 6, 6, 1, 3, 2),
    (1, 2, 7, 9, 2, 3, 2),
    (2, 1, 10, 11, 3, 3, 3),
    (1, 2, 11, 13, 2, 5, 2),
    (1, 1, 17, 12, 2, 3, 4),
]


@pytest.mark.parametrize("length", [6, 7, 9, 10, 13, 14])
@pytest.mark.parametrize("k, d", [(3, 2), (3, 3), (5, 2)])
def test_window_table_matches_natten(length, k, d):
    if length < k * d:
        pytest.skip("NATTEN needs length >= kernel_size * dilation")
    expected = [[natten_window_start(i, length, k, d) + n * d for n in range(k)] for i in range(length)]
    assert neighbour_indices(length, k, dilation=d).tolist() == expected


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_rpb", [True, False])
def test_reference_matches_brute_force(shape, with_rpb):
    *dims, k, d = shape
    logits, value, rpb = _inputs(*dims, k)
    rpb = rpb if with_rpb else None
    torch.testing.assert_close(contmix_reference(logits, value, k, rpb, d), brute_force(logits, value, k, d, rpb))


def test_reference_backward_matches_brute_force_autograd():
    logits, value, rpb = (t.requires_grad_() for t in _inputs(1, 2, 7, 9, 2, 3))
    grad_out = torch.randn(1, 2, 7, 9, 2, dtype=torch.float64)
    ours = torch.autograd.grad(contmix_reference(logits, value, 3, rpb, 2), (logits, value, rpb), grad_out)
    expected = torch.autograd.grad(brute_force(logits, value, 3, 2, rpb), (logits, value, rpb), grad_out)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_dilation_one_is_the_undilated_window():
    logits, value, rpb = _inputs(1, 2, 7, 8, 3, 5)
    torch.testing.assert_close(contmix_reference(logits, value, 5, rpb, 1), contmix_reference(logits, value, 5, rpb))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES + [(1, 2, 26, 40, 4, 13, 2), (2, 2, 28, 31, 3, 7, 4)], ids=str)
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
def test_backends_dilated_match_reference(backend, shape, layout):
    *dims, k, d = shape
    logits, value, rpb = _inputs(*dims, k, layout=layout)
    args = [t.detach().requires_grad_() for t in (logits, value, rpb)]
    out = contmix_apply(*args[:2], k, args[2], backend, dilation=d)
    expected = contmix_reference(*args[:2], k, args[2], d)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, args, grad_out)
    reference = torch.autograd.grad(expected, args, grad_out)
    for a, e in zip(ours, reference):
        torch.testing.assert_close(a, e)


def test_output_keeps_the_value_layout():
    _, planar, _ = _inputs(1, 2, 8, 8, 3, 3, layout="planar")
    logits = torch.randn(1, 2, 8, 8, 9, dtype=torch.float64)
    out = contmix_apply(logits, planar, 3, dilation=2)
    assert out.stride(4) > out.stride(3)  # channels outside the width, as the value's


def test_map_smaller_than_the_dilated_window_is_a_clear_error():
    logits, value, _ = _inputs(1, 1, 9, 12, 2, 5)
    with pytest.raises(ValueError, match=r"smaller than kernel_size 5 x dilation 2 = 10"):
        contmix_apply(logits, value, 5, dilation=2)
    with pytest.raises(ValueError, match="dilation must be a positive integer"):
        contmix_apply(logits, value, 5, dilation=0)


def test_scripted_dilated_apply_is_bitwise_equal():
    logits, value, rpb = _inputs(1, 2, 10, 9, 3, 3, dtype=torch.float32)
    scripted = torch.jit.script(contmix_apply)
    assert torch.equal(scripted(logits, value, 3, rpb, "auto", 3), contmix_apply(logits, value, 3, rpb, dilation=3))
