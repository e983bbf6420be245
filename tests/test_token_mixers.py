"""The Table 7 token mixers and their Swin-like network: shapes and gradients of every mixer, the maths of the
mixers that have an independent reference (window attention, neighbourhood attention, DCNv3, the dynamic
convolutions), and the sizes and costs of the networks against hand counts and the paper's figures."""
from __future__ import annotations

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

import overlock  # noqa: F401  (registers the models)
from overlock.analysis import count_macs, count_params
from overlock.models.swin_like import TABLE7, SwinLike
from overlock.models.token_mixers import (
    TOKEN_MIXERS,
    DyConvMixer,
    InvolutionMixer,
    NeighbourhoodAttentionMixer,
    ODConvMixer,
    ShiftedWindowMixer,
    create_token_mixer,
    dcnv3_sample,
)

ROWS = ("DyConv", "ODConv", "Involution", "Outlooker", "DCNv3", "Swin", "NA", "ContMix")


def test_table7_rows_are_registered_models():
    assert tuple(TABLE7) == ROWS
    assert {row["mixer"] for row in TABLE7.values()} == set(TOKEN_MIXERS)
    for row in TABLE7.values():
        assert row["model"] in timm.list_models("overlock_mixer_*")
        assert set(row) >= {"model", "params_m", "gflops", "top1"}


# ---------------------------------------------------------------------------------------------- every mixer
@pytest.mark.parametrize("name", list(TOKEN_MIXERS))
@pytest.mark.parametrize("size", [(9, 11), (5, 4)], ids=["9x11", "5x4-below-kernel"])
def test_mixer_shapes_and_gradients(name, size):
    """Same shape out as in (also for maps that are not window multiples, or smaller than the kernel), finite
    values, and a gradient for the input and every parameter."""
    torch.manual_seed(0)
    mixer = create_token_mixer(name, 32, kernel_size=7, block_index=1)
    x = torch.randn(2, 32, *size, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in mixer.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"


def test_unknown_mixer_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown token mixer 'conv'"):
        create_token_mixer("conv", 32)
    with pytest.raises(ValueError, match="unknown token mixer"):
        SwinLike(mixer="conv")


# ---------------------------------------------------------------------------------------------- Swin windows
def _direct_window_attention(mixer: ShiftedWindowMixer, x: torch.Tensor) -> torch.Tensor:
    """Full attention over all tokens of the (padded) map, masked to the pairs that Swin's shifted windows join:
    the same window of the map rolled by -shift, and no pair that only the cyclic roll brought together; the
    bias read from the relative position table by the pair's offset within the rolled window."""
    attn = mixer.attn
    w, s = mixer.window, mixer.shift
    batch, channels, height, width = x.shape
    pad_h, pad_w = (-height) % w, (-width) % w
    x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    if max(hp, wp) <= w:
        s = 0
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), row-major
    heads = attn.num_heads
    q, k, v = attn.qkv(tokens).reshape(batch, -1, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-1, -2)  # (B, heads, N, N)
    table = attn.relative_position_bias_table  # ((2w-1)^2, heads)
    positions = list(itertools.product(range(hp), range(wp)))
    bias = torch.full((heads, len(positions), len(positions)), float("-inf"))
    for a, (i, j) in enumerate(positions):
        ri, rj = (i - s) % hp, (j - s) % wp
        for b, (m, n) in enumerate(positions):
            rm, rn = (m - s) % hp, (n - s) % wp
            same_window = (ri // w, rj // w) == (rm // w, rn // w)
            no_wrap = (i < s) == (m < s) and (j < s) == (n < s)
            if same_window and no_wrap:
                bias[:, a, b] = table[(ri - rm + w - 1) * (2 * w - 1) + (rj - rn + w - 1)]
    out = torch.softmax(logits + bias, dim=-1) @ v  # (B, heads, N, c)
    out = attn.proj(out.transpose(1, 2).reshape(batch, -1, channels))
    return out.transpose(1, 2).reshape(batch, channels, hp, wp)[:, :, :height, :width]


@pytest.mark.parametrize(
    "size, window, shift", [((6, 6), 3, 0), ((6, 6), 3, 1), ((9, 6), 3, 1), ((5, 7), 3, 1), ((3, 3), 3, 1)]
)
def test_shifted_window_attention_matches_masked_full_attention(size, window, shift):
    torch.manual_seed(0)
    mixer = ShiftedWindowMixer(8, num_heads=2, window=window, shift=shift)
    with torch.no_grad():
        mixer.attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(mixer(x), _direct_window_attention(mixer, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- neighbourhood
def _per_pixel_neighbourhood_attention(mixer: NeighbourhoodAttentionMixer, x: torch.Tensor) -> torch.Tensor:
    """Each pixel's softmax attention over its K x K window, placed at clamp(i - K//2, 0, L - K), written as a loop."""
    k, heads = mixer.kernel_size, mixer.num_heads
    batch, channels, height, width = x.shape
    c = channels // heads
    q, key, v = mixer.qkv(x).reshape(batch, 3, heads, c, height, width).unbind(1)
    out = torch.zeros(batch, heads, c, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            si, sj = min(max(i - k // 2, 0), height - k), min(max(j - k // 2, 0), width - k)
            for h in range(heads):
                logits, values = [], []
                for a in range(si, si + k):
                    for b in range(sj, sj + k):
                        bias = mixer.rpb[h, a - i + k - 1, b - j + k - 1]
                        logits.append((q[:, h, :, i, j] * key[:, h, :, a, b]).sum(-1).double() * mixer.scale + bias)
                        values.append(v[:, h, :, a, b].double())
                weights = torch.softmax(torch.stack(logits, -1), -1)  # (B, K*K)
                out[:, h, :, i, j] = (weights[:, None, :] * torch.stack(values, -1)).sum(-1)
    return mixer.proj(out.reshape(batch, channels, height, width).float())


@pytest.mark.parametrize("size, kernel_size", [((5, 6), 3), ((7, 8), 5)])
def test_neighbourhood_attention_matches_per_pixel_loop(size, kernel_size):
    """On the oracle backend and on the default one."""
    torch.manual_seed(0)
    mixer = NeighbourhoodAttentionMixer(8, num_heads=2, kernel_size=kernel_size, backend="reference")
    with torch.no_grad():
        mixer.rpb.normal_()
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        expected = _per_pixel_neighbourhood_attention(mixer, x)
        torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)
        mixer.backend = "auto"
        torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- DCNv3
def _sampling_inputs(batch, height, width, groups, kernel_size):
    points = kernel_size * kernel_size
    return torch.zeros(batch, height, width, groups, points, 2), torch.zeros(batch, height, width, groups, points)


def test_dcnv3_undeformed_uniform_is_box_filter():
    """Zero offsets and masks 1/K^2: the K x K mean with zero padding."""
    x = torch.randn(2, 6, 7, 9)
    offset, mask = _sampling_inputs(2, 7, 9, 3, 5)
    out = dcnv3_sample(x, offset, mask + 1 / 25, 5)
    torch.testing.assert_close(out, F.avg_pool2d(x, 5, 1, 2, count_include_pad=True), rtol=1e-5, atol=1e-6)


def test_dcnv3_undeformed_is_depthwise_conv_with_group_kernels():
    """Zero offsets and the same masks at every pixel: a depthwise convolution whose kernel is the group's mask."""
    torch.manual_seed(0)
    groups, channels, k = 2, 6, 3
    x = torch.randn(2, channels, 5, 6)
    kernels = torch.randn(groups, k * k)
    offset, mask = _sampling_inputs(2, 5, 6, groups, k)
    out = dcnv3_sample(x, offset, mask + kernels, k)
    weight = kernels.repeat_interleave(channels // groups, 0).reshape(channels, 1, k, k)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=k // 2, groups=channels), rtol=1e-5, atol=1e-5)


def test_dcnv3_offsets_move_the_sampling_points():
    """A single point (K = 1) moved by (+1, 0) reads the right neighbour, by (+0.5, 0) the mean of both, by
    (0, -1) the neighbour above; zero beyond the border."""
    x = torch.randn(1, 2, 4, 5)
    offset, mask = _sampling_inputs(1, 4, 5, 1, 1)
    right = F.pad(x[..., 1:], (0, 1))
    torch.testing.assert_close(dcnv3_sample(x, offset + torch.tensor([1.0, 0.0]), mask + 1, 1), right)
    torch.testing.assert_close(dcnv3_sample(x, offset + torch.tensor([0.5, 0.0]), mask + 1, 1), (x + right) / 2)
    above = F.pad(x[..., :-1, :], (0, 0, 1, 0))
    torch.testing.assert_close(dcnv3_sample(x, offset + torch.tensor([0.0, -1.0]), mask + 1, 1), above)


# ---------------------------------------------------------------------------------------------- dynamic convs
def test_dyconv_with_one_kernel_is_a_depthwise_conv():
    torch.manual_seed(0)
    mixer = DyConvMixer(8, kernel_size=5, num_kernels=1)
    with torch.no_grad():
        mixer.bias.normal_()
    x = torch.randn(2, 8, 6, 7)
    hidden = F.conv2d(mixer.proj_in(x), mixer.weight[0][:, None], mixer.bias[0], padding=2, groups=8)
    torch.testing.assert_close(mixer(x), mixer.proj_out(hidden), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer_cls", [DyConvMixer, ODConvMixer])
def test_dynamic_kernels_are_per_image(mixer_cls):
    """The batch is folded into one grouped convolution: each image must still get only its own kernels."""
    torch.manual_seed(0)
    mixer = mixer_cls(16, kernel_size=7).eval()
    x = torch.randn(3, 16, 8, 8)
    together = mixer(x)
    alone = torch.cat([mixer(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_involution_with_a_fixed_kernel_is_a_depthwise_conv():
    """Kernels generated as a constant (zero weights, the kernel as bias): a depthwise convolution sharing each
    group's kernel over its channels."""
    torch.manual_seed(0)
    mixer = InvolutionMixer(32, kernel_size=3, group_channels=16).eval()
    kernels = torch.randn(2, 9)
    with torch.no_grad():
        mixer.kernel_gen[-1].weight.zero_()
        mixer.kernel_gen[-1].bias.copy_(kernels.flatten())
    x = torch.randn(2, 32, 5, 6)
    weight = kernels.repeat_interleave(16, 0).reshape(32, 1, 3, 3)
    expected = mixer.proj_out(F.conv2d(mixer.proj_in(x), weight, padding=1, groups=32))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- the network
def test_swin_row_size_and_cost_match_a_hand_count():
    """Parameters and MACs of the Swin row at 224, counted by hand from the architecture: patch embedding, per
    block norms, qkv + projection + relative position table, MLP, the 2x2 downsamplings, the head; MACs of every
    linear map and of the 7x7-window products (QK^T and AV: 2 x 49 x C per pixel)."""
    model = timm.create_model("overlock_mixer_swin")
    dims, depths, sides = (64, 128, 256, 512), (2, 2, 6, 2), (56, 28, 14, 7)
    params = 3 * 64 * 16 + 64 + 2 * 64
    macs = 3 * 64 * 16 * 56 * 56
    for i, (dim, depth, side) in enumerate(zip(dims, depths, sides)):
        pixels = side * side
        if i:
            params += 2 * dims[i - 1] + 4 * dims[i - 1] * dim + dim
            macs += 4 * dims[i - 1] * dim * pixels
        block = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 13 * 13 * (dim // 32)
        block += 2 * dim + (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)
        params += depth * block
        macs += depth * (12 * dim * dim * pixels + 2 * 49 * dim * pixels)
    params += 2 * 512 + 512 * 1000 + 1000
    macs += 512 * 1000
    assert count_params(model) == params
    assert count_macs(model) == macs


SMALL = dict(dims=(32, 64, 96, 128), depths=(1, 2, 1, 1))  # the network at a test size, same code


def test_network_forward_backward_and_features():
    torch.manual_seed(0)
    model = timm.create_model("overlock_mixer_swin", num_classes=10, drop_path_rate=0.1, **SMALL)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    final, levels = model.forward_intermediates(x)
    assert [tuple(t.shape) for t in levels] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 96, 4, 6), (2, 128, 2, 3)]
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(model.forward_head(final), model(x))
    assert model.forward_head(final, pre_logits=True).shape == (2, 128)
    assert len(model.forward_intermediates(x, indices=[1], intermediates_only=True)) == 1
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), model.forward_head(final))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    features = timm.create_model("overlock_mixer_swin", features_only=True, out_indices=(1, 3), **SMALL)
    assert features.feature_info.reduction() == [8, 32]
    assert [t.shape[1] for t in features(x)] == [64, 128]


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_every_network_trains_a_step(row):
    torch.manual_seed(0)
    model = timm.create_model(TABLE7[row]["model"], num_classes=10)
    x = torch.randn(2, 3, 96, 96)
    loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_size_and_cost_match_the_paper(row):
    """Parameters and FLOPs (MACs, as the paper counts them) at 224 within 5 % of Table 7."""
    figures = TABLE7[row]
    if figures["params_m"] is None or figures["gflops"] is None:
        pytest.skip(f"Table 7's figures for {row} are not recorded in TABLE7 (see docs/token_mixers.md)")
    model = timm.create_model(figures["model"])
    assert count_params(model) / 1e6 == pytest.approx(figures["params_m"], rel=0.05)
    assert count_macs(model) / 1e9 == pytest.approx(figures["gflops"], rel=0.05)
