"""The reference ContMix op against a brute-force loop written from the neighbourhood definition."""
from __future__ import annotations

import pytest
import torch

from overlock.ops import available_backends, contmix_apply, contmix_reference, resolve_backend
from probes import LargestTensor


def brute_force(logits, value, k, rpb=None):
    """Loop over every query and neighbour: window start clamp(i - K//2, 0, L - K), NATTEN's rule."""
    b_, g_, h_, w_, c_ = value.shape
    out = torch.zeros_like(value)
    for b in range(b_):
        for g in range(g_):
            for i in range(h_):
                si = min(max(i - k // 2, 0), h_ - k)
                for j in range(w_):
                    sj = min(max(j - k // 2, 0), w_ - k)
                    scores = logits[b, g, i, j].clone()
                    if rpb is not None:
                        for a in range(k):
                            for c in range(k):
                                scores[a * k + c] += rpb[g, si + a - i + k - 1, sj + c - j + k - 1]
                    weights = scores.softmax(-1)
                    for a in range(k):
                        for c in range(k):
                            out[b, g, i, j] += weights[a * k + c] * value[b, g, si + a, sj + c]
    return out


def _inputs(b, g, h, w, c, k, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, g, h, w, k * k, generator=gen, dtype=dtype)
    value = torch.randn(b, g, h, w, c, generator=gen, dtype=dtype)
    rpb = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype)
    return logits, value, rpb


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3, 3, 1, 3), (2, 2, 5, 8, 3, 3), (1, 2, 7, 7, 2, 7), (1, 1, 9, 6, 4, 5), (1, 3, 11, 13, 2, 5)],
    ids=str,
)
@pytest.mark.parametrize("with_rpb", [True, False])
def test_forward_matches_brute_force(shape, with_rpb):
    logits, value, rpb = _inputs(*shape)
    rpb = rpb if with_rpb else None
    k = shape[-1]
    torch.testing.assert_close(contmix_reference(logits, value, k, rpb), brute_force(logits, value, k, rpb))


def test_backward_matches_brute_force_autograd():
    shape = (1, 2, 6, 9, 3, 5)
    args = [t.requires_grad_() for t in _inputs(*shape)]
    grad_out = torch.randn(*shape[:5], dtype=torch.float64)
    ours = torch.autograd.grad(contmix_reference(*args[:2], 5, args[2]), args, grad_out)
    expected = torch.autograd.grad(brute_force(*args[:2], 5, args[2]), args, grad_out)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_gradcheck_float64():
    logits, value, rpb = (t.requires_grad_() for t in _inputs(1, 2, 4, 5, 2, 3))
    assert torch.autograd.gradcheck(lambda l, v, r: contmix_reference(l, v, 3, r), (logits, value, rpb))


def test_non_contiguous_inputs():
    logits, value, rpb = _inputs(2, 2, 8, 7, 3, 5)
    logits_t = logits.transpose(2, 3).contiguous().transpose(2, 3)
    value_t = value.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2)
    assert not value_t.is_contiguous()
    torch.testing.assert_close(contmix_reference(logits_t, value_t, 5, rpb), contmix_reference(logits, value, 5, rpb))


def test_memory_bounded_no_k2_copy_of_value():
    """No intermediate, forward or backward, is larger than the kernel weights or the value map
    (an unfold approach makes a K^2 x C per-pixel copy, here 49 x 16 = 16x the weights)."""
    logits, value, rpb = (t.float().requires_grad_() for t in _inputs(1, 2, 20, 24, 16, 7))
    with LargestTensor() as tracker:
        out = contmix_reference(logits, value, 7, rpb)
        out.sum().backward()
    assert tracker.largest <= max(logits.numel(), value.numel())


def test_half_precision_inputs_follow_value_dtype():
    logits, value, rpb = _inputs(1, 2, 7, 9, 4, 5, dtype=torch.float32)
    out = contmix_apply(logits.bfloat16(), value.bfloat16(), 5, rpb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), contmix_reference(logits, value, 5, rpb), rtol=3e-2, atol=3e-2)


def test_input_validation():
    logits, value, rpb = _inputs(1, 2, 6, 6, 3, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="odd"):
        contmix_apply(logits, value, 4)
    with pytest.raises(ValueError, match="last dim must be 25"):
        contmix_apply(logits[..., :24], value, 5)
    with pytest.raises(ValueError, match="smaller than kernel_size 7"):
        contmix_apply(torch.randn(1, 2, 6, 6, 49), value, 7)
    with pytest.raises(ValueError, match="rpb must have shape"):
        contmix_apply(logits, value, 5, rpb[:1])
    with pytest.raises(ValueError, match=r"\(B, G, H, W, C\)"):
        contmix_apply(logits, value[0], 5)


def test_backend_selection_and_override():
    value = torch.randn(1, 1, 5, 5, 2)
    assert "reference" in available_backends()
    assert resolve_backend("reference", value) == "reference"
    with pytest.raises(ValueError, match="unknown ContMix backend 'nope'"):
        resolve_backend("nope", value)
    with pytest.raises(ValueError, match="unknown ContMix backend"):
        contmix_apply(torch.randn(1, 1, 5, 5, 9), value, 3, backend="nope")
