"""Eval-mode BatchNorm folding: same outputs and state dict as the plain layers."""
from __future__ import annotations

import torch
from torch import nn

from overlock.layers.conv import DilatedRepConv
from overlock.layers.fused import FoldingSequential


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=gen))
            m.bias.data.copy_(torch.randn(c, generator=gen))


def _pair(*layers: nn.Module) -> tuple[nn.Sequential, FoldingSequential]:
    plain = nn.Sequential(*layers)
    _randomise_bn(plain)
    folding = FoldingSequential(*layers)  # shares the modules
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
