"""Parameters and MACs against the paper's Table 1, and the ``overlock info`` command."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from overlock.analysis import PAPER_FIGURES, count_macs, count_params
from overlock.cli.info import describe
from overlock.cli.main import main


@pytest.mark.parametrize("name", list(PAPER_FIGURES))
def test_params_and_macs_within_5_percent_of_paper(name):
    row = describe(name, 224)
    paper = PAPER_FIGURES[name]
    assert abs(row["params_m"] / paper["params_m"] - 1) <= 0.05, row
    assert abs(row["gmacs"] / paper["gmacs"] - 1) <= 0.05, row


def test_count_macs_of_a_known_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (3, 10, 10)) == 8 * 10 * 10 * 3 * 9
    assert count_params(conv) == 8 * 27 + 8
    assert count_params(conv, exclude_prefixes=("bias",)) == 8 * 27


def test_count_macs_counts_the_models_kernel_not_the_padded_one(monkeypatch):
    """13x13 depthwise kernels run as 15x15 on some CPUs; the count is that of the 13x13 convolution."""
    from overlock.layers.conv import DepthwiseConv2d

    class ChannelsLastConv(DepthwiseConv2d):  # the model computes in channels-last, where the padding applies
        def forward(self, x):
            return super().forward(x.contiguous(memory_format=torch.channels_last))

    monkeypatch.setenv("OVERLOCK_DEPTHWISE_PAD", "on")
    assert count_macs(ChannelsLastConv(4, 13, bias=True), (4, 14, 14)) == 4 * 14 * 14 * 13 * 13


def test_count_macs_sees_the_logits_matmul_inside_the_fused_contmix_op():
    """The converted block's fused ContMix op counts its ``query @ key``: the same MACs as the plain block, whose
    matmuls the counter sees directly."""
    from overlock import analysis, optimize_for_inference
    from overlock.layers import ContMixBlock
    from overlock.ops.custom_op import softmax_av
    from torch.utils.flop_counter import FlopCounterMode

    block = ContMixBlock(32, kernel_size=7, num_heads=2).eval()
    converted = optimize_for_inference(block)
    block.reparameterize()  # the deploy form: one merged kernel, as the converted block has
    assert count_macs(converted, (32, 9, 11)) == count_macs(block, (32, 9, 11))
    formulas = analysis._custom_flop_formulas()
    del formulas[softmax_av._opoverload.overloadpacket]
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=formulas) as blind:
        converted(torch.zeros(1, 32, 9, 11))
    groups, channels = 4, 16 // 4  # 2 heads -> 4 groups; half the 32 channels are query channels
    query_key = groups * 9 * 11 * channels * (7 * 7 + 5 * 5)  # both kernels' logits, per image
    assert count_macs(block, (32, 9, 11)) - blind.get_total_flops() // 2 == query_key


def test_reparam_form_has_fewer_params_same_outputs():
    model = timm.create_model("test_overlock", with_aux_head=False).eval()
    before = count_params(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert count_params(model) < before


def test_info_command_json(capsys):
    assert main(["info", "test_overlock", "--img-size", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "test_overlock" and rows[0]["gmacs"] > 0


def test_info_command_unknown_model():
    with pytest.raises(SystemExit, match="unknown model"):
        main(["info", "overlock_xxl"])
