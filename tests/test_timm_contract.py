"""What timm's own model tests (.ci/timm-tests) ask of the Table 7 networks and the ablation switches, at test
sizes: TorchScript, fx tracing (timm's leaf modules and functions) and fx-then-TorchScript compute what the eager
model computes, and a model is built on the device and in the dtype it is asked for."""
import pytest
import timm
import torch
from test_one_computation import _timm_fx, randomise

import overlock  # noqa: F401  (registers the models)
from overlock.layers import DynamicConvBlock
from overlock.layers.contmix import ContMix
from overlock.models.token_mixers import TOKEN_MIXERS
from overlock.ops.geometry import relative_position_bias
from overlock.ops.reference import neighbourhood_weighted_sum

# One stage of two blocks on an 8x12 map: Swin's windows are shifted in the second (the map spans 2 x 2 windows).
SMALL = dict(dims=(32,), depths=(2,))
IMAGE = (2, 3, 32, 48)


def _small_network(mixer: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise(timm.create_model(f"overlock_mixer_{mixer}", num_classes=5, **SMALL, **kwargs)).eval()


@pytest.mark.parametrize("mixer", list(TOKEN_MIXERS))
def test_network_scripts_and_traces_to_its_eager_outputs(mixer):
    model = _small_network(mixer)
    x = torch.randn(IMAGE)
    traced = _timm_fx(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(torch.jit.script(model)(x), expected)
        assert torch.equal(traced(x), expected)
        assert torch.equal(torch.jit.script(traced)(x), expected)


def test_traced_network_trains_every_parameter():
    """fx tracing in train mode (timm's backward test), the Swin mixer a leaf: the graph's gradients are the eager
    model's."""
    model = _small_network("swin").train()
    x = torch.randn(IMAGE)
    model(x).square().mean().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    _timm_fx(model, train=True)(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("mixer", list(TOKEN_MIXERS))
def test_network_is_built_on_the_requested_device_and_dtype(mixer):
    """In float64 (every parameter created so: one left in float32 would stop the forward) the network computes
    what the float32 one computes with the same weights; on the meta device nothing is allocated."""
    model = _small_network(mixer)
    double = timm.create_model(f"overlock_mixer_{mixer}", num_classes=5, dtype=torch.float64, **SMALL).eval()
    assert all(t.dtype == torch.float64 for t in double.state_dict().values() if t.is_floating_point())
    double.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    x = torch.randn(IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(double(x.double()).float(), model(x), rtol=1e-4, atol=1e-5)
    meta = timm.create_model(f"overlock_mixer_{mixer}", device="meta").eval()
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    assert meta.in_chans == 3
    assert meta(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 1000)


def _unnormalised_reference(value, query, key, proj_weight, rpbs, sizes, groups, dilation):
    """ContMix without its softmax, written out: per group the query's dot products with the region keys
    projected by ``proj_weight``, plus the position bias, weight the neighbours (the reference op); the small
    kernel on the first half of the value channels, the large one on the second."""
    batch, channels, height, width = value.shape
    query = query.reshape(batch, groups, -1, height, width)
    key = key.reshape(batch, groups, -1, key.shape[-2] * key.shape[-1])
    logits = torch.einsum("bgchw,bgcr,nr->bghwn", query, key, proj_weight.flatten(1))
    halves = value.reshape(batch, 2, groups, -1, height, width).permute(1, 0, 2, 4, 5, 3)  # (2, B, G, H, W, c)
    outs, start = [], 0
    for half, size, rpb in zip(halves, sizes, rpbs):
        bias = relative_position_bias(rpb, height, width, size, dilation)
        weights = logits[..., start:start + size * size] + bias
        outs.append(neighbourhood_weighted_sum(weights, half, size, dilation))
        start += size * size
    return torch.stack(outs, 1).permute(0, 1, 2, 5, 3, 4).reshape(batch, channels, height, width)


@pytest.mark.parametrize("dilation", [1, 2])
def test_softmax_free_contmix_scripts_and_computes_the_unnormalised_kernels(dilation):
    torch.manual_seed(0)
    groups, small, large, (height, width) = 2, 3, 5, (11, 13)
    value, query = torch.randn(1, 16, height, width), torch.randn(1, 8, height, width)
    key, proj_weight = torch.randn(1, 8, 7, 7), torch.randn(small**2 + large**2, 49, 1, 1) * 0.1
    rpbs = (torch.randn(groups, 2 * small - 1, 2 * small - 1), torch.randn(groups, 2 * large - 1, 2 * large - 1))
    contmix = ContMix(large, small, groups, dilation=dilation, softmax=False)
    args = (value, query, key, proj_weight, None, *rpbs)
    expected = _unnormalised_reference(value, query, key, proj_weight, rpbs, (small, large), groups, dilation)
    torch.testing.assert_close(contmix(*args), expected)
    torch.testing.assert_close(torch.jit.script(contmix)(*args), contmix(*args), rtol=0, atol=0)


def test_softmax_free_focus_block_scripts_to_its_eager_outputs():
    """The block of the Table F row ``wo_softmax`` (overlock_abl_tableF_wo_softmax), scripted."""
    torch.manual_seed(0)
    block = randomise(DynamicConvBlock(16, 8, kernel_size=5, smk_size=3, num_heads=2, softmax=False)).eval()
    x, ctx, prior = torch.randn(1, 16, 10, 12), torch.randn(1, 8, 10, 12), torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(block)(x, ctx, prior), block(x, ctx, prior))
