"""``optimize_for_inference``: the converted model gives the plain model's outputs (1e-5 relative), pass by pass
and all together, is made of inference modules that can be inspected, traced, compiled and exported, and cannot
be trained."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from overlock import optimize_for_inference
from overlock.layers import ContMix, DilatedRepConv, GRN, ResDWConv, SEModule
from overlock.layers.fused import (
    BatchParts, FoldedConv, FusedContMix, InPlaceGRN, InPlaceSE, OneDNNConv, onednn_fusion_available,
)
from overlock.models import PASSES
from test_one_computation import NAME, randomise

TOL = 1e-5
SIZES = [(2, 3, 64, 80), (1, 3, 40, 33), (1, 3, 97, 131)]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.fixture(scope="module")
def plain() -> nn.Module:
    torch.manual_seed(0)
    return randomise(timm.create_model(NAME)).eval()


@pytest.fixture(scope="module")
def converted(plain) -> nn.Module:
    return optimize_for_inference(plain)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_every_pass_gives_the_plain_outputs(plain, converted, size):
    x = torch.randn(*size)
    with torch.no_grad():
        expected, features = plain(x), plain.forward_features(x)
        assert rel_err(converted(x), expected) <= TOL
        assert rel_err(converted.forward_features(x), features) <= TOL


@pytest.mark.parametrize("passes", [("fold",), *[("fold", p) for p in PASSES[1:]]], ids=str)
def test_each_pass_on_its_own(plain, passes):
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert rel_err(optimize_for_inference(plain, passes)(x), plain(x)) <= TOL


def test_converted_model_is_made_of_inference_modules(plain, converted):
    kinds = {type(m) for m in converted.modules()}
    assert not kinds & {nn.BatchNorm2d, DilatedRepConv, ResDWConv, GRN, SEModule, ContMix}
    assert {InPlaceGRN, InPlaceSE, FusedContMix, BatchParts} <= kinds
    assert (OneDNNConv if onednn_fusion_available() else FoldedConv) in kinds
    assert not any(p.requires_grad for p in converted.parameters())
    assert "activation=gelu" in repr(converted.patch_embed1)
    assert isinstance(plain.blocks1[0].proj[2], nn.BatchNorm2d), "the plain model is left as it was"


def test_plain_convolutions_without_onednn(plain):
    """The fallback of the oneDNN pass: plain convolutions with the same folded weights."""
    converted = optimize_for_inference(plain, [p for p in PASSES if p != "onednn"])
    assert not any(isinstance(m, OneDNNConv) for m in converted.modules())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert rel_err(converted(x), plain(x)) <= TOL


@pytest.mark.skipif(not onednn_fusion_available(), reason="this PyTorch has no oneDNN convolution fusion")
@pytest.mark.parametrize("activation", ["none", "gelu", "silu"])
def test_onednn_conv_matches_the_plain_one(activation):
    torch.manual_seed(0)
    weight, bias = torch.randn(8, 1, 13, 13), torch.randn(8)
    args = (weight, bias, (1, 1), (6, 6), (1, 1), 8, activation)
    x = torch.randn(2, 8, 15, 12).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(OneDNNConv(*args)(x), FoldedConv(*args)(x), rtol=1e-5, atol=1e-5)


def test_stem_and_stage1_run_in_parts_of_the_batch(plain):
    """Uneven parts (2, 2, 1 images) give the same outputs as the whole batch: eval mode is per image."""
    converted = optimize_for_inference(plain)
    per_image = plain.embed_dims[0] * 16 * 16 * 4  # stage-1 output of one 64 px image, float32
    converted.patch_embed1.max_bytes = 2 * per_image
    x = torch.randn(5, 3, 64, 64)
    assert converted.patch_embed1.parts(x) == 3 and converted.patch_embed1.parts(x[:1]) == 1
    calls = []
    converted.patch_embed1.module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        assert rel_err(converted(x), plain(x)) <= TOL
    assert calls == [2, 2, 1]


def test_converted_model_refuses_training(converted):
    with pytest.raises(RuntimeError, match="inference module installed by optimize_for_inference"):
        converted.train()
    converted.eval()


def test_dense_backbone():
    torch.manual_seed(0)
    dense = randomise(timm.create_model(NAME, dense_form="detection")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = optimize_for_inference(dense)(x)
        assert len(levels) == 4
        for ours, expected in zip(levels, dense(x)):
            assert rel_err(ours, expected) <= TOL


def test_deploy_variant(plain):
    reparam = timm.create_model(NAME, deploy=True).eval()
    reparam.load_state_dict(copy.deepcopy(plain).reparameterize().state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert rel_err(optimize_for_inference(reparam)(x), plain(x)) <= TOL


def test_unknown_pass_is_named(plain):
    with pytest.raises(ValueError, match=r"unknown inference passes \['fast'\]"):
        optimize_for_inference(plain, ["fast"])


def test_traces_and_exports(plain, converted):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer

    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = converted(x)
        tracer = NodePathTracer(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
        traced = torch.fx.GraphModule(converted, tracer.trace(converted))
        assert torch.equal(traced(x), expected)
        exported = torch.export.export(converted, (x,)).module()
        assert rel_err(exported(x), expected) <= TOL


def test_compiles_as_one_graph(plain, converted):
    x = torch.randn(1, 3, 64, 80)
    torch._dynamo.reset()
    compiled = torch.compile(converted, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), plain(x)) <= TOL


def test_autocast_with_the_dtype_independent_passes(plain):
    """What ``prepare_for_inference`` installs for mixed precision runs under autocast and stays close."""
    converted = optimize_for_inference(plain, ["fold", "inplace_norms"])
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, expected = converted(x), plain(x)
    assert ours.dtype == expected.dtype == torch.bfloat16
    assert rel_err(ours, expected) <= 0.05
