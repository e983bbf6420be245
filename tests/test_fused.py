"""Eval-mode BatchNorm folding: same outputs and state dict as the plain layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from overlock.layers.conv import DilatedRepConv
from overlock.layers.fused import FusedSequential


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=gen))
            m.bias.data.copy_(torch.randn(c, generator=gen))


def _pair(*layers: nn.Module) -> tuple[nn.Sequential, FusedSequential]:
    plain = nn.Sequential(*layers)
    _randomise_bn(plain)
    folding = FusedSequential(*layers)  # shares the modules
    return plain, folding


def test_conv_bn_and_bn_pointwise_fold_in_eval():
    plain, folding = _pair(
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(),
        nn.BatchNorm2d(8), nn.Conv2d(8, 5, 1), nn.SiLU(),
    )
    assert list(plain.state_dict()) == list(folding.state_dict())
    x = torch.randn(2, 6, 15, 13)
    plain.eval(), folding.eval()
    torch.testing.assert_close(folding(x), plain(x), rtol=1e-5, atol=1e-5)


def test_merged_dilated_repconv_folds_its_bn():
    rep = DilatedRepConv(4, 7)
    _randomise_bn(rep, seed=1)
    rep.eval().reparameterize()
    plain, folding = _pair(rep, nn.BatchNorm2d(4))
    plain.eval(), folding.eval()
    x = torch.randn(1, 4, 12, 12)
    torch.testing.assert_close(folding(x), plain(x), rtol=1e-5, atol=1e-5)


def test_training_mode_runs_layers_unchanged():
    plain, folding = _pair(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    x = torch.randn(4, 3, 5, 5)
    before = folding[1].running_mean.clone()
    torch.testing.assert_close(folding.train()(x), plain.train()(x))
    assert not torch.equal(folding[1].running_mean, before)  # batch statistics were used and tracked


def test_conv_bn_activation_runs_as_one_onednn_call_in_cpu_inference(monkeypatch):
    """conv (-> BN) -> GELU or SiLU in inference becomes one oneDNN conv with that post-op, same outputs; with
    gradients needed the layers run as they are."""
    from overlock.layers import prepared
    from overlock.layers.conv import ResDWConv

    if not prepared.ONEDNN_POINTWISE:
        pytest.skip("this PyTorch build has no oneDNN pointwise convolution")
    plain, folding = _pair(
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(),  # conv -> BN -> GELU
        ResDWConv(8, 3), nn.GELU(),  # residual depthwise conv -> GELU: its identity must be kept
        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),  # the gate of the ContMix blocks
        nn.Conv2d(8, 4, 1), nn.GELU(approximate="tanh"),  # not the exact GELU: not fused
    )
    plain.eval(), folding.eval()
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise

    def spy(*args):  # records the post-op of every oneDNN call that has one
        if args[7] != "none":
            calls.append(args[7])
        return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy)
    for x in (torch.randn(2, 6, 15, 13), torch.randn(2, 6, 15, 13).to(memory_format=torch.channels_last)):
        with torch.no_grad():
            torch.testing.assert_close(folding(x), plain(x), rtol=1e-5, atol=1e-5)
        assert calls == ["gelu", "gelu", "swish"]
        calls.clear()
        out = folding(x)  # parameters need gradients: unfused, and differentiable
        assert not calls and out.requires_grad
        torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_grn_fast_norm_matches_vector_norm(memory_format):
    """Both sums of squares (map-sized squares; one image at a time for channels-last inference)."""
    from overlock.layers.norm import GRN

    grn = GRN(5)
    with torch.no_grad():
        grn.gamma.normal_(), grn.beta.normal_()
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64).contiguous(memory_format=memory_format)
    norm = torch.linalg.vector_norm(x, dim=(-1, -2), keepdim=True)
    expected = x * (grn.gamma.double() * norm / (norm.mean(1, keepdim=True) + 1e-6) + 1) + grn.beta.double()
    with torch.no_grad():
        torch.testing.assert_close(grn.double()(x), expected)
    torch.testing.assert_close(grn(x.requires_grad_()), expected)


def test_grn_gradient_is_finite_at_a_zero_channel():
    from overlock.layers.norm import GRN

    grn = GRN(3)
    with torch.no_grad():
        grn.gamma.fill_(0.5)
    x = torch.randn(2, 3, 4, 4)
    x[:, 1] = 0
    x.requires_grad_()
    grn(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(grn.gamma.grad).all()


def test_grn_and_se_rescale_intermediates_in_place(monkeypatch):
    """In inference, GRN and SE overwrite maps made inside the sequence, never the caller's input."""
    from overlock.layers.norm import GRN
    from overlock.layers.se import SEModule

    calls = []
    for cls in (GRN, SEModule):
        method = cls.rescale_
        monkeypatch.setattr(cls, "rescale_", lambda self, x, method=method: calls.append(self) or method(self, x))
    torch.manual_seed(0)
    grn, se = GRN(16), SEModule(16)
    with torch.no_grad():
        grn.gamma.normal_(), grn.beta.normal_()
    plain, fused = _pair(nn.Conv2d(8, 16, 1), se, grn, nn.Conv2d(16, 8, 1))
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    expected = plain.eval()(x)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), expected)
    assert calls == [se, grn]

    calls.clear()
    source = torch.randn(2, 16, 5, 6)
    before = source.clone()
    with torch.no_grad():  # the first layer sees the caller's tensor, an identity passes it on
        out = FusedSequential(grn, nn.Identity(), se)(source)
        out2 = FusedSequential(nn.Identity(), grn)(source)
    torch.testing.assert_close(source, before)
    torch.testing.assert_close(out, se(grn(before)))
    torch.testing.assert_close(out2, grn(before))
    assert calls == [se]  # se got GRN's fresh output; nothing else was rescaled in place

    calls.clear()
    fused.train()(x.requires_grad_()).sum().backward()  # training keeps the out-of-place forward
    assert not calls and x.grad is not None


def test_residual_sum_written_over_the_branch_only_where_safe():
    """Inference without LayerScale sums into the branch's own map; every other case leaves both alone."""
    from overlock.layers.contmix import residual
    from overlock.layers.scale import LayerScale

    shortcut, branch = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    kept_shortcut, kept_branch = shortcut.clone(), branch.clone()
    identity = nn.Identity().eval()
    with torch.no_grad():
        out = residual(shortcut, branch, identity, identity, res_scale=True)
    assert out.data_ptr() == branch.data_ptr()  # in place
    torch.testing.assert_close(out, kept_shortcut + kept_branch, rtol=0, atol=0)
    torch.testing.assert_close(shortcut, kept_shortcut, rtol=0, atol=0)

    ls = LayerScale(4, 0.5)
    cases = [
        (shortcut, kept_branch.clone(), ls, True, False),  # LayerScale: out of place
        (shortcut, shortcut, identity, True, False),  # the branch is the shortcut's own memory
        (shortcut, kept_branch.bfloat16(), identity, False, False),  # mixed dtypes: promoted, as out of place
        (shortcut, kept_branch.clone(), identity, False, True),  # gradients: out of place
    ]
    for short, br, scale, res_scale, grad in cases:
        before = br.clone()
        with torch.set_grad_enabled(grad):
            br.requires_grad_(grad)
            out = residual(short, br, scale, identity, res_scale)
            expected = scale(short) + br if res_scale else short + scale(br)
        assert out.data_ptr() != br.data_ptr() and out.dtype == expected.dtype
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(br.detach(), before.detach(), rtol=0, atol=0)
