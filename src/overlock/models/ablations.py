"""The paper's ablation models (Table 6 and the supplementary Tables A-G), each buildable by name.

A row of an ablation table is an :class:`AblationRow`: its table and name (``"table6/dds_model"``), the timm model
that builds it, the paper's figures, the training options that belong to it (the auxiliary-loss weight of Table D,
the fine-tuning recipe of Table G) and a note on the choices made where the paper leaves one open. Rows that are
OverLoCK with some constructor switches set are registered here as timm models named
``overlock_abl_<table>_<name>``, built through the same :class:`OverLoCK` code; rows that are a published variant
(OverLoCK-XT itself, OverLoCK-B) point at that variant. Other tables (the token-mixer comparison, Table 7) plug in
as rows with their own timm model names.

``resolve_model_name`` maps a table name or a timm name to the timm name the CLIs and ``timm.create_model`` take;
``row_for_model`` finds the row of either. docs/ablations.md lists every row, its configuration, the parameters and
MACs measured against the paper's figures, and the command that trains it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import timm
from timm.models import generate_default_cfgs, register_model

from .overlock import MODEL_ARGS, OverLoCK, _cfg, _create_overlock
from .swin_like import TABLE7

__all__ = [
    "AblationRow", "ABLATIONS", "builds_overlock", "resolve_model_name", "row_for_model", "ablation_rows",
    "rows_from_table",
]

PREFIX = "overlock_abl_"


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation table.

    ``model`` is the timm name that builds the row; ``model_kwargs`` are the constructor arguments over
    ``base`` (an entry of ``MODEL_ARGS``) for rows registered here, empty for rows that are an existing model.
    ``train`` holds training options of the row (``TrainConfig`` fields) and ``preset`` the classification recipe it
    starts from. Paper figures are None where the paper's table could not be read when this was written (see
    docs/ablations.md).
    """

    table: str
    name: str
    label: str
    model: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    base: str = "overlock_xt"
    paper_params_m: Optional[float] = None
    paper_gflops: Optional[float] = None
    paper_top1: Optional[float] = None
    paper_miou: Optional[float] = None
    train: Mapping[str, Any] = field(default_factory=dict)
    preset: str = "ablation"
    note: str = ""

    @property
    def key(self) -> str:
        """The row's table name, e.g. ``table6/dds_model``."""
        return f"{self.table}/{self.name}"

    @property
    def registered_here(self) -> bool:
        return self.model.startswith(PREFIX)


def _row(table: str, name: str, label: str, note: str = "", **kwargs: Any) -> AblationRow:
    """A row registered here as ``overlock_abl_<table>_<name>``."""
    return AblationRow(table, name, label, f"{PREFIX}{table}_{name}", note=note, **kwargs)


# Table 6 before the decomposition: a plain hierarchical network whose RepConv blocks gain their parts one by one.
_HIERARCHICAL = dict(overview_net=False, embed_dims=(64, 112, 256, 360), depths=(2, 2, 9, 4), sub_depths=(0, 0))
_PLAIN_BLOCK = dict(rep_conv=False, se=False, res_dwconv=False, conv_ffn=False)
_ROADMAP_NOTE = ("hierarchical network of Table E's widths and depths, all RepConv blocks (the paper's exact "
                 "roadmap widths could not be read here)")
# Table 6 after it: OverLoCK-XT with the Focus-Net parts switched off
_NO_AUX = dict(with_aux_head=False)
_STATIC = dict(dynamic=False, gate=False, reinject_prior=False)
_DYNAMIC = dict(dynamic=True, gate=False, reinject_prior=False)

_TABLE6 = [
    _row("table6", "plainnet", "PlainNet", _ROADMAP_NOTE,
         model_kwargs=dict(_HIERARCHICAL, block_kwargs=_PLAIN_BLOCK)),
    _row("table6", "dilated_repconv", "+ Dilated RepConv", _ROADMAP_NOTE,
         model_kwargs=dict(_HIERARCHICAL, block_kwargs=dict(_PLAIN_BLOCK, rep_conv=True))),
    _row("table6", "se", "+ SE", _ROADMAP_NOTE,
         model_kwargs=dict(_HIERARCHICAL, block_kwargs=dict(_PLAIN_BLOCK, rep_conv=True, se=True))),
    _row("table6", "dwconv3x3", "+ 3x3 DWConv", _ROADMAP_NOTE,
         model_kwargs=dict(_HIERARCHICAL, block_kwargs=dict(conv_ffn=False))),
    _row("table6", "baseline", "ConvFFN (Baseline)", _ROADMAP_NOTE, model_kwargs=dict(_HIERARCHICAL)),
    _row("table6", "recurrent_model", "Recurrent Model",
         "the Baseline's stages 3-4 run twice with the same weights, the second pass fed back the first pass's "
         "stage-4 output (projected to 90 channels, joined to each stage's input by a 1x1 conv); no aux loss",
         model_kwargs=dict(_HIERARCHICAL, feedback=True)),
    _row("table6", "dds_model", "DDS Model",
         "OverLoCK-XT with a static Focus-Net (Dilated RepConv only), no gate, no prior re-injection, no aux loss",
         model_kwargs=dict(_NO_AUX, focus_block_kwargs=_STATIC), train=dict(aux_weight=0.0)),
    _row("table6", "wo_feature_feed", "w/o feature feed",
         "the DDS model whose Focus-Net context channels start from zeros instead of the Overview-Net's prior; "
         "the Overview-Net, then unused, is not built (Base-Net + Focus-Net)",
         model_kwargs=dict(_NO_AUX, feature_feed=False, focus_block_kwargs=_STATIC), train=dict(aux_weight=0.0)),
    _row("table6", "static_to_dynamic", "Static -> Dynamic", "the DDS model with ContMix in the Focus-Net",
         model_kwargs=dict(_NO_AUX, focus_block_kwargs=_DYNAMIC), train=dict(aux_weight=0.0)),
    _row("table6", "aux_loss", "+ aux loss", "the auxiliary Overview-Net head trained with weight 0.4",
         model_kwargs=dict(focus_block_kwargs=_DYNAMIC), train=dict(aux_weight=0.4)),
    _row("table6", "initial_prior", "+ initial prior",
         "every Focus-Net block after the first mixes the Overview-Net's context prior in again",
         model_kwargs=dict(focus_block_kwargs=dict(gate=False)), train=dict(aux_weight=0.4)),
    AblationRow("table6", "gate", "+ gate (OverLoCK-XT)", "overlock_xt", paper_params_m=16, paper_gflops=2.6,
                train=dict(aux_weight=0.4), note="exactly overlock_xt"),
]

# Table A: kernel sizes of stages 1-4 (stage 3 and 4 sizes also set the dynamic kernels)
_KERNEL_SETTINGS = {
    "k13_11_9_5": (13, 11, 9, 5),
    "k15_13_11_7": (15, 13, 11, 7),
    "k17_15_13_7": (17, 15, 13, 7),
    "k19_17_15_9": (19, 17, 15, 9),
    "k7_7_7_7": (7, 7, 7, 7),
}
_TABLEA = [
    AblationRow("tableA", name, f"kernels {sizes}", "overlock_xt", paper_params_m=16, paper_gflops=2.6,
                note="the OverLoCK-XT setting")
    if sizes == (17, 15, 13, 7) else
    _row("tableA", name, f"kernels {sizes}", "kernel settings chosen here (the paper's could not be read here)",
         model_kwargs=dict(kernel_sizes=sizes))
    for name, sizes in _KERNEL_SETTINGS.items()
]

# Table B: Base-Net stage 3 : Focus-Net stage 3 blocks, 9 in all as in XT (3 : 6 is 1:2)
_TABLEB = [
    _row("tableB", "ratio_1_1", "1:1", "4 : 5 blocks (9 cannot split evenly)",
         model_kwargs=dict(depths=(2, 2, 4, 2), sub_depths=(5, 2))),
    AblationRow("tableB", "ratio_1_2", "1:2", "overlock_xt", paper_params_m=16, paper_gflops=2.6,
                note="3 : 6 blocks, OverLoCK-XT"),
    _row("tableB", "ratio_1_3", "1:3", "2 : 7 blocks (9 cannot split 1:3 exactly)",
         model_kwargs=dict(depths=(2, 2, 2, 2), sub_depths=(7, 2))),
]

# Table C: context channels = dim4 / r; the Focus-Net's ConvFFN width adjusted to keep XT's MACs
_TABLEC = [
    _row("tableC", "r2", "r = 2", "Focus-Net ConvFFN ratio 2.125 (XT: 3) to keep the cost",
         model_kwargs=dict(ctx_reduction=2, sub_mlp_ratios=(2.125, 2.125))),
    AblationRow("tableC", "r4", "r = 4", "overlock_xt", paper_params_m=16, paper_gflops=2.6,
                note="OverLoCK-XT"),
    _row("tableC", "r6", "r = 6", "Focus-Net ConvFFN ratio 3.375 to keep the cost",
         model_kwargs=dict(ctx_reduction=6, sub_mlp_ratios=(3.375, 3.375))),
    _row("tableC", "r8", "r = 8", "Focus-Net ConvFFN ratio 3.625 to keep the cost",
         model_kwargs=dict(ctx_reduction=8, sub_mlp_ratios=(3.625, 3.625))),
]

# Table D: the auxiliary loss weight, a training option of OverLoCK-XT
_TABLED = [
    AblationRow("tableD", f"aux_{str(weight).replace('.', '_')}", f"aux weight {weight}", "overlock_xt",
                paper_params_m=16, paper_gflops=2.6, train=dict(aux_weight=weight),
                note="weights chosen here around the paper's 0.4 (its other values could not be read here)")
    for weight in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
]

# Table E: a hierarchical network of XT's blocks (RepConv, then plug-and-play ContMix) without the Overview-Net
_TABLEE = [
    _row("tableE", "hierarchical", "Hierarchical Model",
         "[64, 112, 256, 360] channels, [2, 2, 3 + 6, 2 + 2] blocks (RepConv + ContMix), no Overview-Net",
         model_kwargs=dict(overview_net=False, embed_dims=(64, 112, 256, 360), depths=(2, 2, 3, 2),
                           sub_depths=(6, 2))),
    AblationRow("tableE", "overlock_xt", "OverLoCK-XT", "overlock_xt", paper_params_m=16, paper_gflops=2.6),
]

# Table F: ContMix variants in OverLoCK-XT's Focus-Net
_TABLEF = [
    _row("tableF", "fusion_affinity", "Fusion Affinity",
         "query and key both from the fused features + context map",
         model_kwargs=dict(focus_block_kwargs=dict(affinity="fusion"))),
    _row("tableF", "reverse_qk", "Reverse QK", "query from the context channels, key from the features",
         model_kwargs=dict(focus_block_kwargs=dict(affinity="reverse"))),
    _row("tableF", "wo_softmax", "w/o Softmax", "logits plus position bias used as kernel weights unnormalised",
         model_kwargs=dict(focus_block_kwargs=dict(softmax=False))),
    _row("tableF", "wo_repconv", "w/o RepConv", "no Dilated RepConv branch beside ContMix",
         model_kwargs=dict(focus_block_kwargs=dict(rep_conv=False))),
    _row("tableF", "wo_small_kernel", "w/o Small Kernel", "both halves of the groups take the large kernel",
         model_kwargs=dict(focus_block_kwargs=dict(small_kernel=False))),
    AblationRow("tableF", "contmix", "ContMix (OverLoCK-XT)", "overlock_xt", paper_params_m=16, paper_gflops=2.6),
]

# Table G: OverLoCK-B fine-tuned at 384 x 384 (its 224 figures are the paper's Table 1)
_TABLEG = [
    AblationRow("tableG", "overlock_b_384", "OverLoCK-B 384", "overlock_b", base="overlock_b",
                paper_params_m=95, paper_gflops=16.7, preset="overlock_b_384",
                note="figures at 224 (Table 1); fine-tuned and evaluated at 384 by the overlock_b_384 preset"),
]

ABLATIONS: dict[str, AblationRow] = {
    row.key: row for row in _TABLE6 + _TABLEA + _TABLEB + _TABLEC + _TABLED + _TABLEE + _TABLEF + _TABLEG
}


def rows_from_table(table: str, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, AblationRow]:
    """Rows of another module's table, given as ``{row name: {"model": timm name, "params_m": ..., "gflops": ...,
    "top1": ...}}`` (the form of Table 7's ``TABLE7``), keyed by their table names: ``ABLATIONS.update(...)`` adds
    them to the registry. Row keys are the names in lower case; the names stay as the rows' labels."""
    rows = [
        AblationRow(table, name.lower(), entry.get("label", name), entry["model"], paper_params_m=entry.get("params_m"),
                    paper_gflops=entry.get("gflops"), paper_top1=entry.get("top1"), note=entry.get("note", ""))
        for name, entry in entries.items()
    ]
    return {row.key: row for row in rows}


ABLATIONS.update(rows_from_table("table7", TABLE7))  # the token-mixer comparison (models/swin_like.py)


def ablation_rows(table: Optional[str] = None) -> list[AblationRow]:
    """Every row, or those of ``table`` (e.g. ``'table6'``), in the paper's order."""
    return [row for row in ABLATIONS.values() if table is None or row.table == table]


def resolve_model_name(name: str) -> str:
    """The timm model name of ``name``: a row's table name (``table6/dds_model``) gives the row's model; any
    other name is returned as it is. A name with '/' that is no row is an error naming the tables' rows."""
    if name in ABLATIONS:
        return ABLATIONS[name].model
    if "/" in name:
        tables = sorted({row.table for row in ABLATIONS.values()})
        raise ValueError(f"unknown ablation row {name!r}; tables: {', '.join(tables)} "
                         f"(rows: see overlock.models.ablations.ABLATIONS or docs/ablations.md)")
    return name


def builds_overlock(name: str) -> bool:
    """Whether timm's model ``name`` is built by the ``OverLoCK`` class (a published variant or an ablation row) and
    so takes its arguments (``with_aux_head``, ``deploy``); Table 7's token-mixer networks are not."""
    return name in timm.list_models(module=["overlock", "ablations"])


def row_for_model(name: str) -> Optional[AblationRow]:
    """The row of a table name, or of a timm name registered here (None for other models)."""
    if name in ABLATIONS:
        return ABLATIONS[name]
    return next((row for row in ABLATIONS.values() if row.registered_here and row.model == name), None)


# ---------------------------------------------------------------------- timm registration
def _classifiers(row: AblationRow) -> tuple[str, ...]:
    """The classifier modules of a row's model: the auxiliary one only where the row keeps the Overview-Net and
    its head."""
    kwargs = row.model_kwargs
    with_aux = all(kwargs.get(switch, True) for switch in ("with_aux_head", "overview_net", "feature_feed"))
    return ("head.4", "aux_head.2") if with_aux else ("head.4",)


default_cfgs = generate_default_cfgs({
    f"{row.model}.untrained": _cfg(crop_pct=0.925 if row.base == "overlock_xt" else 0.975,
                                   classifier=_classifiers(row))
    for row in ABLATIONS.values() if row.registered_here
})


def _entrypoint(row: AblationRow) -> Any:
    """The timm entry point of ``row``: its base variant's arguments, the row's switches, then the caller's."""
    def build(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
        arch = dict(MODEL_ARGS[row.base], **row.model_kwargs)
        return _create_overlock(row.model, pretrained=pretrained, **dict(arch, **kwargs))

    build.__name__ = build.__qualname__ = row.model
    build.__doc__ = f"Ablation {row.key} ({row.label}): {row.note}"
    return build


def _register_all() -> None:
    for row in ABLATIONS.values():
        if row.registered_here:
            register_model(_entrypoint(row))


_register_all()
