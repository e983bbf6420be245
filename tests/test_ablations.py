"""The paper's ablation models: every row builds by name, costs what the paper (or docs/ablations.md) says, and
each constructor switch computes what it claims, while the default model stays the published one."""
from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from overlock.analysis import count_macs, count_params
from overlock.cli import info as info_cli
from overlock.cli import seg as seg_cli
from overlock.cli import train as train_cli
from overlock.cli.args import OneLineParser
from overlock.layers import DynamicConvBlock, RepConvBlock
from overlock.layers.contmix import ContMix
from overlock.models import ABLATIONS, MODEL_ARGS, OverLoCK, builds_overlock, resolve_model_name, row_for_model
from overlock.models.ablations import rows_from_table
from overlock.ops import contmix_apply

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ablations.md"
PAPER_TOLERANCE = 0.05  # the paper's figures are rounded (16 M, 2.6 G)
DOCS_TOLERANCE = 0.01  # the figures measured here and written in docs/ablations.md (two decimals)


@lru_cache(maxsize=None)
def cost(model_name: str) -> tuple[float, float]:
    """Deploy-form parameters (M, without the auxiliary head) and MACs (G) at 224, as ``overlock info`` counts
    them; built on the meta device (no memory, no initialisation)."""
    kwargs = dict(with_aux_head=False, deploy=True) if builds_overlock(model_name) else {}
    model = timm.create_model(model_name, device="meta", **kwargs)
    return count_params(model) / 1e6, count_macs(model, (3, 224, 224)) / 1e9


# ---------------------------------------------------------------------- the registry
def test_every_row_builds_through_timm_and_resolves():
    for key, row in ABLATIONS.items():
        assert row.key == key and "/" in key
        assert row.model in timm.list_models(), key
        assert resolve_model_name(key) == row.model
        assert row_for_model(key) is row
        if row.registered_here:
            assert row_for_model(row.model) is row
            assert "/" not in row.model and row.model == f"overlock_abl_{row.table}_{row.name}"
    assert resolve_model_name("overlock_t") == "overlock_t"  # other names pass through
    with pytest.raises(ValueError, match="unknown ablation row 'table6/nothing'"):
        resolve_model_name("table6/nothing")


def test_another_tables_rows_plug_in_as_rows():
    """Table 7's rows come as {name: {"model", "params_m", "gflops", "top1"}} (models/swin_like.py's TABLE7)."""
    rows = rows_from_table("table7", {"contmix": {"model": "overlock_xt", "params_m": 16.0, "gflops": 2.6,
                                                  "top1": 80.1}})
    row = rows["table7/contmix"]
    assert (row.table, row.name, row.model, row.paper_params_m, row.paper_gflops, row.paper_top1) == (
        "table7", "contmix", "overlock_xt", 16.0, 2.6, 80.1)
    assert not row.registered_here and row.preset == "ablation"


def test_roadmap_ends_at_overlock_xt_itself():
    rows = [row for row in ABLATIONS.values() if row.table == "table6"]
    assert [row.name for row in rows] == [  # the paper's order
        "plainnet", "dilated_repconv", "se", "dwconv3x3", "baseline", "recurrent_model", "dds_model",
        "wo_feature_feed", "static_to_dynamic", "aux_loss", "initial_prior", "gate"]
    assert [row.name for row in rows][-1] == "gate" and rows[-1].model == "overlock_xt"
    assert len(rows) >= 10
    # from the DDS model on, each step adds exactly its part to the model (keys; the rest is unchanged)
    steps = {
        "table6/static_to_dynamic": (".weight_query.", ".weight_key.", ".weight_proj.", ".dyconv_proj.", ".rpb"),
        "table6/aux_loss": ("aux_head.",),
        "table6/initial_prior": (".x_scale.", ".h_scale."),
        "table6/gate": (".gate.",),
    }
    previous = timm.create_model(ABLATIONS["table6/dds_model"].model, device="meta").state_dict()
    for key, parts in steps.items():
        current = timm.create_model(ABLATIONS[key].model, device="meta").state_dict()
        added = set(current) - set(previous)
        assert set(previous) < set(current), key
        assert added and all(any(part in k for part in parts) for k in added), key
        assert all(current[k].shape == previous[k].shape for k in previous), key
        previous = current


@pytest.mark.parametrize("key", [
    pytest.param(k, marks=[pytest.mark.slow] if r.base != "overlock_xt" else [])  # B takes seconds to count
    for k, r in ABLATIONS.items() if r.paper_params_m and r.paper_gflops
])
def test_rows_with_paper_figures_cost_what_the_paper_says(key):
    row = ABLATIONS[key]
    params_m, gmacs = cost(row.model)
    assert params_m == pytest.approx(row.paper_params_m, rel=PAPER_TOLERANCE)
    assert gmacs == pytest.approx(row.paper_gflops, rel=PAPER_TOLERANCE)


@pytest.mark.parametrize("key", ["tableC/r2", "tableC/r6", "tableC/r8"])
def test_channel_reduction_rows_keep_the_cost_of_xt(key):
    """Table C changes the context width and adjusts the Focus-Net to keep OverLoCK-XT's cost."""
    params_m, gmacs = cost(ABLATIONS[key].model)
    xt_params_m, xt_gmacs = cost("overlock_xt")
    assert gmacs == pytest.approx(xt_gmacs, rel=0.01)
    assert params_m == pytest.approx(xt_params_m, rel=PAPER_TOLERANCE)
    ctx_reduction = ABLATIONS[key].model_kwargs["ctx_reduction"]
    model = timm.create_model(ABLATIONS[key].model, device="meta")
    assert model.ctx_dim == 336 // ctx_reduction


def test_stage_ratio_rows_keep_the_block_count():
    for key in ("tableB/ratio_1_1", "tableB/ratio_1_2", "tableB/ratio_1_3"):
        model = timm.create_model(ABLATIONS[key].model, device="meta")
        assert len(model.blocks3) + len(model.sub_blocks3) == 9, key


def _documented_figures() -> dict[str, tuple[float, float]]:
    """``| key | ... | params (M) | MACs (G) | ...`` rows of the measured-figures table in docs/ablations.md."""
    figures = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`([\w/.]+)`\s*\|[^|]*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
        if match and match.group(1) in ABLATIONS:
            figures[match.group(1)] = (float(match.group(2)), float(match.group(3)))
    return figures


def test_docs_list_every_row():
    assert set(_documented_figures()) == set(ABLATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ABLATIONS))
def test_every_row_costs_what_the_docs_say(key):
    params_m, gmacs = cost(ABLATIONS[key].model)
    documented_params_m, documented_gmacs = _documented_figures()[key]
    assert params_m == pytest.approx(documented_params_m, rel=DOCS_TOLERANCE, abs=0.01)
    assert gmacs == pytest.approx(documented_gmacs, rel=DOCS_TOLERANCE, abs=0.01)


# ---------------------------------------------------------------------- the switches compute what they say
def test_plain_repconv_block_is_a_norm_large_kernel_bn_mlp():
    torch.manual_seed(0)
    dim, k = 8, 7
    block = RepConvBlock(dim, kernel_size=k, mlp_ratio=2, rep_conv=False, se=False, res_dwconv=False,
                         conv_ffn=False).eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, dim, 12, 12)
    norm, conv, bn, _, fc1, _, _, _, fc2 = block.proj
    y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (dim,), norm.weight, norm.bias, norm.eps)
    y = torch.nn.functional.conv2d(y.permute(0, 3, 1, 2), conv.weight, None, padding=k // 2, groups=dim)
    y = (y - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    y = fc2(torch.nn.functional.gelu(fc1(y)))
    torch.testing.assert_close(block(x), x + y)
    assert not any(isinstance(m, (nn.Conv2d,)) and m.groups > 1 and m.kernel_size == (3, 3) for m in block.modules())


def _focus_pair(**switches):
    """A default Focus-Net block and one with ``switches``, holding the same weights where both have them."""
    torch.manual_seed(0)
    kwargs = dict(dim=16, ctx_dim=8, kernel_size=5, smk_size=3, num_heads=2, mlp_ratio=2, ls_init_value=1.0)
    reference = DynamicConvBlock(**kwargs, contmix_backend="reference").eval()
    for p in reference.parameters():
        nn.init.normal_(p, std=0.2)
    variant = DynamicConvBlock(**kwargs, contmix_backend="reference", **switches).eval()
    missing, _ = variant.load_state_dict(reference.state_dict(), strict=False)
    assert not missing
    inputs = (torch.randn(2, 16, 9, 9), torch.randn(2, 8, 9, 9), torch.randn(2, 8, 9, 9))
    return reference, variant, inputs


class _Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("switch, part, value", [("gate", "gate", 1.0), ("rep_conv", "lepe", 0.0)])
def test_focus_block_without_a_branch_is_the_block_with_that_branch_neutral(switch, part, value):
    """No gate = a gate of ones; no Dilated RepConv = a branch of zeros (the rest of the block unchanged)."""
    reference, variant, inputs = _focus_pair(**{switch: False})
    assert getattr(variant, part) is None
    setattr(reference, part, _Constant(value))
    torch.testing.assert_close(variant(*inputs), reference(*inputs))


def test_static_focus_block_without_prior_reinjection_ignores_the_prior():
    _, static, (x, ctx, prior) = _focus_pair(dynamic=False, reinject_prior=False)
    assert static.contmix is None and static.x_scale is None
    torch.testing.assert_close(static(x, ctx, prior), static(x, ctx, torch.randn_like(prior)))
    reference, _, _ = _focus_pair()
    assert not torch.allclose(reference(x, ctx, prior), reference(x, ctx, torch.randn_like(prior)))


def test_affinity_sets_where_query_and_key_come_from():
    reverse = DynamicConvBlock(16, 8, kernel_size=5, smk_size=3, num_heads=2, affinity="reverse")
    assert reverse.weight_query[0].in_channels == 8 and reverse.weight_key[1].in_channels == 16
    fusion = DynamicConvBlock(16, 8, kernel_size=5, smk_size=3, num_heads=2, affinity="fusion")
    assert fusion.weight_query[0].in_channels == 24 and fusion.weight_key[1].in_channels == 24
    with pytest.raises(ValueError, match="affinity"):
        DynamicConvBlock(16, 8, affinity="cross")


def test_reverse_affinity_is_the_default_block_on_swapped_query_and_key_sources():
    """With as many context channels as features, 'reverse' is the default block whose fused map's two halves
    are swapped for the query and key (checked by running the default block's kernel generation on them)."""
    torch.manual_seed(0)
    kwargs = dict(dim=16, ctx_dim=16, kernel_size=5, smk_size=3, num_heads=2, contmix_backend="reference")
    default = DynamicConvBlock(**kwargs).eval()
    reverse = DynamicConvBlock(**kwargs, affinity="reverse").eval()
    reverse.load_state_dict(default.state_dict())
    x, fused = torch.randn(1, 16, 9, 9), torch.randn(1, 32, 9, 9)
    swapped = torch.cat(fused.split([16, 16], dim=1)[::-1], dim=1)
    torch.testing.assert_close(reverse._dynamic_mixing(x, fused), default._dynamic_mixing(x, swapped))


def test_contmix_without_softmax_uses_the_logits_as_weights():
    """Weights w summing to one over each window: w without the softmax = softmax(log w)."""
    torch.manual_seed(0)
    k, groups = 3, 2
    weights = torch.rand(1, groups, 6, 6, k * k) + 0.1
    weights = weights / weights.sum(-1, keepdim=True)
    value = torch.randn(1, groups, 6, 6, 4)
    rpb = torch.zeros(groups, 2 * k - 1, 2 * k - 1)
    unnormalised = ContMix(k, k, groups, softmax=False)._kernel_sum(weights, value, k, rpb)
    torch.testing.assert_close(unnormalised, contmix_apply(weights.log(), value, k, rpb, "reference"))
    assert not torch.allclose(unnormalised, contmix_apply(weights, value, k, rpb, "reference"))


def test_without_small_kernel_both_halves_take_the_large_kernel():
    block = DynamicConvBlock(16, 8, kernel_size=5, smk_size=3, num_heads=2, small_kernel=False)
    assert block.contmix.smk_size == block.contmix.kernel_size == 5
    assert block.weight_proj.out_channels == 2 * 25 and block.rpb1.shape == block.rpb2.shape
    assert block(torch.randn(1, 16, 8, 8), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)).shape == (1, 24, 8, 8)


# ---------------------------------------------------------------------- whole models keep timm's conventions
_SMALL = dict(MODEL_ARGS["test_overlock"], kernel_sizes=(5, 5, 5, 5), contmix_backend="reference")
_VARIANTS = {
    "hierarchical": dict(overview_net=False),
    "plain_hierarchical": dict(overview_net=False, sub_depths=(0, 0),
                               block_kwargs=dict(rep_conv=False, se=False, res_dwconv=False, conv_ffn=False)),
    "static_focus": dict(focus_block_kwargs=dict(dynamic=False, gate=False, reinject_prior=False)),
    "no_repconv": dict(focus_block_kwargs=dict(rep_conv=False), ctx_reduction=2),
    "recurrent": dict(overview_net=False, sub_depths=(0, 0), feedback=True),
    "no_feature_feed": dict(feature_feed=False, focus_block_kwargs=dict(dynamic=False, gate=False,
                                                                         reinject_prior=False)),
}


@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_switched_models_keep_timm_conventions(variant):
    torch.manual_seed(0)
    model = OverLoCK(**dict(_SMALL, **_VARIANTS[variant]), num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 5)
    final, intermediates = model.forward_intermediates(x)
    assert [t.shape[1] for t in intermediates] == [info["num_chs"] for info in model.feature_info]
    assert [64 // t.shape[-1] for t in intermediates] == [info["reduction"] for info in model.feature_info]
    torch.testing.assert_close(model.forward_head(final), logits)
    model.train()
    out = model(x)
    if model.aux_head is None:
        assert isinstance(out, torch.Tensor)
        assert variant.endswith("hierarchical") or variant in ("recurrent", "no_feature_feed")
    dense = OverLoCK(**dict(_SMALL, **_VARIANTS[variant]), dense_form="segmentation").eval()
    assert [t.shape[1] for t in dense(x)] == [info["num_chs"] for info in dense.feature_info]


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=[] if v == "static_focus" else [pytest.mark.slow]) for v in _VARIANTS  # ~10-30 s each
])
def test_switched_models_script_to_the_same_outputs(variant):
    torch.manual_seed(0)
    model = OverLoCK(**dict(_SMALL, **_VARIANTS[variant]), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize("key", [
    pytest.param(k, marks=[] if k == "table6/plainnet" else [pytest.mark.slow])  # XT-sized: ~5-20 s each
    for k, row in ABLATIONS.items() if row.registered_here
])
def test_registered_rows_give_features_only_backbones_and_intermediates(key):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    backbone = timm.create_model(ABLATIONS[key].model, features_only=True, contmix_backend="reference").eval()
    features = backbone(x)
    assert [f.shape[1] for f in features] == backbone.feature_info.channels()
    assert [64 // f.shape[-1] for f in features] == backbone.feature_info.reduction()
    classifier = timm.create_model(ABLATIONS[key].model, num_classes=3, contmix_backend="reference").eval()
    final, intermediates = classifier.forward_intermediates(x)
    assert [t.shape[1] for t in intermediates] == [info["num_chs"] for info in classifier.feature_info]
    torch.testing.assert_close(classifier.forward_head(final), classifier(x))


def test_default_switches_leave_the_published_model_alone():
    explicit = OverLoCK(**MODEL_ARGS["overlock_xt"], ctx_reduction=4, overview_net=True, device="meta",
                        block_kwargs=dict(rep_conv=True, se=True, res_dwconv=True, conv_ffn=True),
                        focus_block_kwargs=dict(dynamic=True, gate=True, reinject_prior=True, affinity="context",
                                                rep_conv=True, small_kernel=True, softmax=True))
    xt = timm.create_model("overlock_xt", device="meta")
    assert {k: v.shape for k, v in explicit.state_dict().items()} == {k: v.shape for k, v in xt.state_dict().items()}


# ---------------------------------------------------------------------- the commands take the rows
def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="overlock")
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_train_command_runs_a_row_with_its_recipe():
    cfg = train_cli.config_from_args(_parse(train_cli, ["--model", "table6/dds_model", "--data-dir", "/data"]))
    assert cfg.model == "overlock_abl_table6_dds_model" and cfg.epochs == 120 and cfg.aux_weight == 0.0
    cfg = train_cli.config_from_args(_parse(train_cli, ["--model", "tableD/aux_0_8", "--aux-weight", "0.1"]))
    assert cfg.model == "overlock_xt" and cfg.aux_weight == 0.1 and cfg.epochs == 120  # the user's option wins
    cfg = train_cli.config_from_args(_parse(train_cli, ["--model", "tableD/aux_0_8"]))
    assert cfg.aux_weight == 0.8
    cfg = train_cli.config_from_args(_parse(train_cli, ["--model", "tableG/overlock_b_384"]))
    assert cfg.model == "overlock_b" and cfg.img_size == 384


def test_seg_command_runs_a_row_with_the_ablation_schedule():
    cfg = seg_cli.config_from_args(_parse(seg_cli, ["train", "--model", "tableF/reverse_qk"]))
    assert cfg.backbone == "overlock_abl_tableF_reverse_qk"
    assert (cfg.iters, cfg.global_batch, cfg.dataset) == (80_000, 32, "ade20k")
    cfg = seg_cli.config_from_args(_parse(seg_cli, ["train", "--backbone", "overlock_abl_table6_baseline"]))
    assert cfg.iters == 80_000


def test_info_command_rejects_unknown_rows():
    with pytest.raises(ValueError, match="unknown ablation row 'table9/x'"):
        info_cli.run(_parse(info_cli, ["table9/x"]))


@pytest.mark.slow  # builds and re-parameterises XT on the CPU
def test_info_command_reports_a_row_with_its_paper_figures(capsys):
    info_cli.run(_parse(info_cli, ["--model", "tableC/r4", "--json"]))
    out = capsys.readouterr().out
    assert '"model": "tableC/r4"' in out and '"paper_params_m": 16' in out


# ---------------------------------------------------------------------- Table 6: Recurrent Model, w/o feature feed
def _perturbed(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter and BN statistic moved off its initial value (zero-initialised
    parts such as GRN and the relative-position biases then act)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _pair(variant: str, **reference_switches) -> tuple[OverLoCK, OverLoCK]:
    """The small model of ``variant`` and the reference model (the variant's switches with
    ``reference_switches`` over them), the reference holding the variant's weights where it has them."""
    model = _perturbed(OverLoCK(**dict(_SMALL, **_VARIANTS[variant]), num_classes=5))
    reference = OverLoCK(**dict(_SMALL, **dict(_VARIANTS[variant], **reference_switches)), num_classes=5).eval()
    return model, reference


def _keys(model_name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in timm.create_model(model_name, device="meta").state_dict().items()}


def test_recurrent_model_is_the_baseline_plus_the_feedback_path():
    """Keys: exactly the feedback projection and the two 1x1 joins over the Baseline's, the shared ones unchanged
    (one set of weights for both passes); MACs: the Baseline's plus its stages 3-4 once more plus the three 1x1
    convs."""
    baseline, recurrent = _keys(ABLATIONS["table6/baseline"].model), _keys(ABLATIONS["table6/recurrent_model"].model)
    ctx, (d3, d4) = 360 // 4, (256, 360)
    assert {k: v for k, v in recurrent.items() if k not in baseline} == {
        "feedback.proj.weight": (ctx, d4, 1, 1), "feedback.proj.bias": (ctx,),
        "feedback.fuse3.weight": (d3, ctx, 1, 1), "feedback.fuse4.weight": (d4, ctx, 1, 1)}
    assert all(recurrent[k] == shape for k, shape in baseline.items())
    params_m, gmacs = cost(ABLATIONS["table6/recurrent_model"].model)
    base_params_m, base_gmacs = cost(ABLATIONS["table6/baseline"].model)
    assert params_m - base_params_m == pytest.approx((d4 * ctx + ctx + ctx * d3 + ctx * d4) / 1e6, abs=1e-9)
    model = timm.create_model(ABLATIONS["table6/baseline"].model, device="meta", deploy=True)
    stages_3_4 = count_macs(nn.Sequential(model.patch_embed3, model.blocks3, model.patch_embed4, model.blocks4),
                            (112, 28, 28))
    feedback = d4 * ctx * 7 * 7 + ctx * d3 * 14 * 14 + ctx * d4 * 7 * 7
    assert gmacs - base_gmacs == pytest.approx((stages_3_4 + feedback) / 1e9, rel=1e-6)


def test_recurrent_model_second_pass_is_fed_the_first_pass():
    """The feedback projection sees the plain network's stage-4 output (the first pass); the second pass joins its
    projection to stages 3 and 4 as a concatenation through a 1x1 conv whose feature part is the identity; and the
    output depends on it."""
    model, baseline = _pair("recurrent", feedback=False)
    baseline.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    model.feedback.proj.register_forward_hook(lambda m, args, out: seen.update(top=args[0], feedback=out))
    logits = model(x)
    torch.testing.assert_close(seen["top"], baseline.forward_features(x))

    def joined(features, feedback, fuse):
        eye = torch.eye(features.shape[1])[:, :, None, None]
        weight = torch.cat([eye, fuse.weight], dim=1)
        feedback = torch.nn.functional.interpolate(feedback, size=features.shape[-2:], mode="bilinear")
        return torch.nn.functional.conv2d(torch.cat([features, feedback], dim=1), weight)

    with torch.no_grad():
        stride8 = baseline.forward_base(x, last=1)[1]
        stage3 = model.blocks3(joined(model.patch_embed3(stride8), seen["feedback"], model.feedback.fuse3))
        stage4 = model.blocks4(joined(model.patch_embed4(stage3), seen["feedback"], model.feedback.fuse4))
    torch.testing.assert_close(logits, model.forward_head(stage4))
    hook = model.feedback.proj.register_forward_hook(lambda m, args, out: out + torch.randn_like(out))
    assert not torch.allclose(model(x), logits, atol=1e-3)
    hook.remove()


def test_recurrent_model_without_feedback_is_the_baseline_run_once():
    """With the feedback projection zeroed the second pass gets zero context: it is the first pass again, the
    Baseline's output with the same weights."""
    model, baseline = _pair("recurrent", feedback=False)
    with torch.no_grad():
        model.feedback.proj.weight.zero_()
        model.feedback.proj.bias.zero_()
    baseline.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), baseline(x))


def test_without_feature_feed_the_overview_net_is_not_built():
    """The DDS model's keys less exactly the Overview-Net's (stage 4 and its projection); nothing added or
    reshaped. Cost: the DDS model's less the Overview-Net's."""
    dds, unfed = _keys(ABLATIONS["table6/dds_model"].model), _keys(ABLATIONS["table6/wo_feature_feed"].model)
    assert set(unfed) < set(dds) and all(unfed[k] == dds[k] for k in unfed)
    assert {k.split(".")[0] for k in set(dds) - set(unfed)} == {"patch_embed4", "blocks4", "high_level_proj"}
    model = timm.create_model(ABLATIONS["table6/dds_model"].model, device="meta", deploy=True)
    overview = nn.Sequential(model.patch_embed4, model.blocks4, model.high_level_proj)
    params_m, gmacs = cost(ABLATIONS["table6/wo_feature_feed"].model)
    dds_params_m, dds_gmacs = cost(ABLATIONS["table6/dds_model"].model)
    assert params_m == pytest.approx(dds_params_m - count_params(overview) / 1e6, abs=1e-9)
    assert gmacs == pytest.approx(dds_gmacs - count_macs(overview, (256, 14, 14)) / 1e9, rel=1e-6)


def test_without_feature_feed_the_focus_net_starts_from_zero_context():
    """The output is the DDS model's (same weights) with a zero prior in place of the Overview-Net's, whatever
    the DDS model's Overview-Net computes."""
    model, dds = _pair("no_feature_feed", feature_feed=True)
    dds.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stride16 = dds.forward_base(x)[2]
        zero_prior = torch.zeros(2, dds.ctx_dim, 2, 2)
        expected = dds.forward_head(dds.forward_focus(stride16, zero_prior)[1])
    torch.testing.assert_close(model(x), expected)
    assert model.high_level_proj is None and model.patch_embed4 is None and len(model.blocks4) == 0


@pytest.mark.parametrize("variant", ["recurrent", "no_feature_feed"])
def test_every_parameter_of_the_table6_switches_is_trained(variant):
    """No dead parameter: one training step's loss reaches every parameter."""
    model = _perturbed(OverLoCK(**dict(_SMALL, **_VARIANTS[variant]), num_classes=5)).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("switches, message", [
    (dict(feedback=True), "needs overview_net=False"),
    (dict(overview_net=False, feature_feed=False), "needs overview_net=True"),
    (dict(feature_feed=False), "reinject_prior=False"),
])
def test_table6_switches_refuse_combinations_they_cannot_build(switches, message):
    with pytest.raises(ValueError, match=message):
        OverLoCK(**dict(_SMALL, **switches), device="meta")
