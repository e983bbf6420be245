"""``output_stride`` 16 and 8: downsampling layers at stride 1, the spatial kernels after them dilated.

The semantics is pinned down by the a-trous identity: a block whose kernels are dilated by d, applied to a map
whose d x d interleaved sub-grids are all the same map X (X upsampled by nearest neighbour), gives that same
upsampling of the undilated block's output on X. Every spatial kernel (depthwise convs, the Dilated RepConv
branches, ContMix's dynamic windows and their relative position bias) must be dilated for it to hold, and the
global statistics (SE, GRN, the 7x7 region keys) are the same on both maps.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.fx

from overlock import optimize_for_inference
from overlock.layers import DynamicConvBlock, RepConvBlock
from overlock.layers.conv import DilatedRepConv
from overlock.models.overlock import StageGeometry, stage_geometry
from test_one_computation import _timm_fx, randomise


def upsample(x: torch.Tensor, d: int) -> torch.Tensor:
    return x.repeat_interleave(d, dim=-2).repeat_interleave(d, dim=-1)


def _dilated_twin(block: torch.nn.Module, factory, d: int) -> torch.nn.Module:
    twin = factory(d)
    twin.load_state_dict(block.state_dict())
    return twin.eval()


def test_stage_geometry_as_timm_defines_output_stride():
    assert stage_geometry(32) == [StageGeometry(4, 1, 4, 1), StageGeometry(8, 1, 2, 1), StageGeometry(16, 1, 2, 1),
                                  StageGeometry(32, 1, 2, 1)]
    assert stage_geometry(16)[3] == StageGeometry(16, 2, 1, 1)
    assert stage_geometry(8)[2:] == [StageGeometry(8, 2, 1, 1), StageGeometry(8, 4, 1, 2)]
    with pytest.raises(ValueError, match="output_stride must be one of"):
        stage_geometry(4)


@pytest.mark.parametrize("d", [2, 3])
def test_dilated_repconv_block_is_the_a_trous_block(d):
    torch.manual_seed(0)

    def factory(dilation):
        return RepConvBlock(16, kernel_size=7, ls_init_value=1.0, res_scale=True, dilation=dilation)

    block = randomise(factory(1)).eval()
    x = torch.randn(2, 16, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(_dilated_twin(block, factory, d)(upsample(x, d)), upsample(block(x), d))


@pytest.mark.parametrize("d", [2, 4])
def test_dilated_focus_block_is_the_a_trous_block(d):
    """ContMix included: 14 x 21 maps, so that the 7 x 7 region pooling has the same bins on both maps."""
    torch.manual_seed(0)

    def factory(dilation):
        return DynamicConvBlock(24, 8, kernel_size=7, num_heads=2, ls_init_value=1.0, res_scale=True,
                                dilation=dilation, contmix_backend="reference")

    block = randomise(factory(1)).eval()
    x, ctx, prior = torch.randn(1, 24, 14, 21), torch.randn(1, 8, 14, 21), torch.randn(1, 8, 14, 21)
    with torch.no_grad():
        expected = upsample(block(x, ctx, prior), d)
        got = _dilated_twin(block, factory, d)(upsample(x, d), upsample(ctx, d), upsample(prior, d))
    torch.testing.assert_close(got, expected)


def test_dilated_repconv_reparameterizes_to_the_same_function():
    torch.manual_seed(0)
    conv = randomise(DilatedRepConv(8, 13, dilation=2)).eval()
    x = torch.randn(1, 8, 30, 31)
    with torch.no_grad():
        expected = conv(x)
        conv.reparameterize()
        assert conv.lk_origin.dilation == (2, 2)
        torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("output_stride, sizes", [(16, [16, 8, 4, 4]), (8, [16, 8, 8, 8])])
def test_pyramid_strides_and_channels(output_stride, sizes):
    model = timm.create_model("test_overlock", features_only=True, output_stride=output_stride).eval()
    assert model.feature_info.reduction() == [4, 8, min(16, output_stride), min(32, output_stride)]
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 64, 64))
    assert [level.shape[-1] for level in levels] == sizes
    assert [level.shape[1] for level in levels] == model.feature_info.channels()


@pytest.mark.parametrize("output_stride", [16, 8])
def test_same_parameters_so_any_checkpoint_loads(output_stride):
    torch.manual_seed(0)
    source = timm.create_model("test_overlock")
    dilated = timm.create_model("test_overlock", output_stride=output_stride)
    dilated.load_state_dict(source.state_dict())  # strict
    dense = timm.create_model("test_overlock", dense_form="segmentation", output_stride=output_stride)
    assert set(dense.state_dict()) == set(timm.create_model("test_overlock", dense_form="segmentation").state_dict())


def test_early_levels_do_not_change():
    torch.manual_seed(0)
    plain = randomise(timm.create_model("test_overlock", dense_form="segmentation")).eval()
    dilated = timm.create_model("test_overlock", dense_form="segmentation", output_stride=16).eval()
    dilated.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(plain(x)[:2], dilated(x)[:2]):
            assert torch.equal(a, b)


@pytest.fixture(scope="module")
def stride8_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise(timm.create_model("test_overlock", dense_form="segmentation", output_stride=8)).eval()


def test_fx_script_and_export_are_bitwise_equal(stride8_backbone):
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = stride8_backbone(x)
        runs = {
            "timm fx": _timm_fx(stride8_backbone)(x),
            "fx": torch.fx.symbolic_trace(stride8_backbone)(x),
            "script": torch.jit.script(stride8_backbone)(x),
            "export": torch.export.export(stride8_backbone, (x,)).module()(x),
        }
    for name, levels in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(levels, expected)), name


def test_gradient_mode_does_not_change_the_output(stride8_backbone):
    x = torch.randn(1, 3, 64, 64)
    with_grad = stride8_backbone(x)
    with torch.no_grad():
        without = stride8_backbone(x)
    assert all(torch.equal(a, b) for a, b in zip(with_grad, without))


def test_inference_conversion_keeps_dilated_contmix(stride8_backbone):
    optimized = optimize_for_inference(stride8_backbone)
    assert {type(m).__name__ for m in optimized.modules()} & {"ContMix"} == {"ContMix"}
    assert "FusedContMix" not in {type(m).__name__ for m in optimized.modules()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(optimized(x), stride8_backbone(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_small_inputs_are_resized_for_the_dilated_window():
    """A stride-8 map of 5 x 4 is below 13 x 2 for stage 3's dilated kernel: resized up and pooled back."""
    model = timm.create_model("test_overlock", dense_form="segmentation", output_stride=8).eval()
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 40, 32))
    assert [tuple(level.shape[-2:]) for level in levels] == [(10, 8), (5, 4), (5, 4), (5, 4)]

