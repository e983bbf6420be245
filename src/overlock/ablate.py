"""An ablation table from one call: each chosen row trained on the same data, budget and seed, then one
comparison table (``table.md``, ``table.csv``) and a plot (``table.png``).

Each row is an ordinary training run in its own folder (``OUT/<table>_<row>``). With a classification recipe
(a ``TrainConfig``) it is a run of :func:`overlock.classification.training.train`, configured as ``overlock train
--model <row>`` configures it: the shared recipe with the row's model and training options; the table reports
top-1. With a segmentation recipe (a ``SegTrainConfig``) it is a run of
:func:`overlock.segmentation.training.train_segmentation`, as ``overlock seg train --model <row>`` configures it:
UperNet on the row's backbone (the row's training options are classification's and do not apply); the table
reports mIoU and aAcc of the evaluation at the run's last iteration. A call that was killed picks up where it
stopped: a row whose folder holds a finished run of the same plan is read back from its ``summary.json``, one that
holds a checkpoint resumes from it.

Size and speed are of the row's model in its ImageNet deploy form (3 channels, 1000 classes, no auxiliary head,
re-parameterised; what ``overlock info`` counts and the paper's figures are of): parameters, MACs at the runs'
image size (a segmentation run's crop size) and at 224, and inference throughput measured round-robin over the
rows (``overlock.benchmark``'s timer) at one batch size and the runs' image size. A segmentation table adds the
MACs of the row's re-parameterised UperNet (no auxiliary head) on one crop.
"""
from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .analysis import count_macs, count_params
from .benchmark import time_round_robin
from .classification.config import TrainConfig, with_ablation_row
from .engine.checkpoint import load_training_checkpoint
from .models import ABLATIONS, AblationRow, builds_overlock, optimize_for_inference
from .segmentation.config import SegTrainConfig, build_segmenter
from .segmentation.data import read_classes

__all__ = [
    "COLUMNS", "SEG_COLUMNS", "ModelCost", "check_segmentation_plan", "deploy_model", "final_evaluation",
    "measure_models", "row_config", "row_folder", "run_ablation", "segmentation_gmacs", "select_rows", "table_row",
    "train_row", "write_table",
]

RowConfig = TrainConfig | SegTrainConfig  # a classification or a segmentation recipe

_logger = logging.getLogger(__name__)

# plan fields that may differ between a finished or checkpointed row and this call: where it runs and how it loads
_NOT_PLAN = ("output", "workers", "save_every")
_RESUMED = _NOT_PLAN + ("max_steps",)  # what a resumed row takes from this call (max_steps: the budget may grow)
FINAL_EVAL = "final_eval.json"  # a row's evaluation at its last step, where its run stopped inside an epoch
COLUMNS = [
    "row", "label", "model", "params_m", "gmacs", "gmacs_224", "images_per_s", "top1", "best_top1", "steps",
    "train_seconds", "paper_params_m", "paper_gflops", "paper_top1",
]
SEG_COLUMNS = [
    "row", "label", "model", "params_m", "gmacs", "gmacs_224", "images_per_s", "seg_gmacs", "miou", "aacc",
    "best_miou", "steps", "train_seconds", "paper_params_m", "paper_gflops", "paper_miou",
]
_HEADERS = {
    "row": "row", "label": "label", "model": "model", "params_m": "params (M)", "gmacs": "GMACs (run size)",
    "gmacs_224": "GMACs (224)", "images_per_s": "images/s", "top1": "top-1 (%)", "best_top1": "best top-1 (%)",
    "seg_gmacs": "UperNet GMACs (crop)", "miou": "mIoU (%)", "aacc": "aAcc (%)", "best_miou": "best mIoU (%)",
    "steps": "steps", "train_seconds": "train s", "paper_params_m": "paper params (M)",
    "paper_gflops": "paper GFLOPs", "paper_top1": "paper top-1 (%)", "paper_miou": "paper mIoU (%)",
}


def select_rows(table: str | None = None, keys: Sequence[str] = ()) -> list[AblationRow]:
    """The rows of ``table`` (e.g. ``'table6'``) followed by the rows named in ``keys`` (``'table6/gate'``),
    without repeats; an error naming the known tables for an unknown table or row, or when nothing is chosen."""
    tables = sorted({row.table for row in ABLATIONS.values()})
    if table is None and not keys:
        raise ValueError(f"choose a table ({', '.join(tables)}) or rows with --rows")
    if table is not None and table not in tables:
        raise ValueError(f"unknown ablation table {table!r}; tables: {', '.join(tables)}")
    unknown = [key for key in keys if key not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation row(s) {', '.join(unknown)}; rows are TABLE/NAME, e.g. table6/dds_model "
                         f"(tables: {', '.join(tables)}; every row: docs/ablations.md)")
    chosen = [row for row in ABLATIONS.values() if row.table == table] + [ABLATIONS[key] for key in keys]
    return list({row.key: row for row in chosen}.values())


def row_folder(out: str | Path, row: AblationRow) -> Path:
    """The run folder of ``row`` under ``out``: ``OUT/<table>_<name>``."""
    return Path(out) / row.key.replace("/", "_")


def row_config(base: RowConfig, row: AblationRow, out: str | Path, given: Iterable[str] = (),
               pretrained_dir: str | Path | None = None) -> RowConfig:
    """``base`` (the shared recipe, budget and seed) training ``row`` in its own folder under ``out``: the row's
    model with its own arguments only (the preset's model arguments belong to the preset's model) and, for a
    classification recipe, the row's training options, except those named in ``given`` (set by the user for every
    row). With ``pretrained_dir`` (an earlier table's folder) the row starts from its run there,
    ``<pretrained_dir>/<table>_<row>/best.pth``."""
    if isinstance(base, SegTrainConfig):
        cfg = base.updated(backbone=row.model)  # as `seg train --model <row>`: the UperNet on the row's backbone
    else:
        cfg = with_ablation_row(base, row, given)
    cfg = cfg.updated(model_kwargs={}, output=str(row_folder(out, row)))
    if pretrained_dir is not None:
        cfg = cfg.updated(pretrained=str(row_folder(pretrained_dir, row) / "best.pth"))
    return cfg


def check_segmentation_plan(rows: Sequence[AblationRow], base: SegTrainConfig) -> None:
    """A one-line error unless every row has a segmentation backbone (OverLoCK rows; Table 7's token-mixer
    networks have none) and every run ends with an evaluation at its last iteration (its mIoU in the table)."""
    other = [row.key for row in rows if not builds_overlock(row.model)]
    if other:
        raise ValueError(f"{', '.join(other)}: no segmentation backbone (Table 7's token-mixer networks are "
                         f"classifiers only); segmentation rows are OverLoCK rows")
    if base.iters < 1 or base.eval_every < 1:
        raise ValueError(f"--iters {base.iters} --eval-every {base.eval_every}: both must be positive (a row's mIoU "
                         f"is its evaluation at its last iteration)")
    if base.max_steps:
        raise ValueError(f"--max-steps {base.max_steps}: a segmentation row's budget is --iters (its poly schedule "
                         f"ends there, with the evaluation the table reports)")


def _plan(config: dict[str, Any]) -> dict[str, Any]:
    """A run configuration as JSON would store it, without the fields that may change between calls."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in _NOT_PLAN}


def _task(config: RowConfig | dict[str, Any]) -> str:
    """'segmentation' or 'classification': the trainer of a run configuration (or of one as JSON)."""
    segmentation = isinstance(config, SegTrainConfig) or isinstance(config, dict) and "backbone" in config
    return "segmentation" if segmentation else "classification"


def _check_same_plan(saved: dict[str, Any], cfg: RowConfig, where: Path) -> None:
    if _task(saved) != _task(cfg):
        raise ValueError(f"{where} holds a {_task(saved)} run, not a {_task(cfg)} one: choose another --out or pass "
                         f"--overwrite to retrain it")
    ours, theirs = _plan(asdict(cfg)), _plan(saved)
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differing:
        changes = ", ".join(f"{k} {theirs.get(k)!r} -> {ours.get(k)!r}" for k in differing)
        raise ValueError(f"{where} holds a run of other settings ({changes}): choose another --out or pass "
                         f"--overwrite to retrain it")


def _train(cfg: RowConfig, resume: bool) -> dict[str, Any]:
    """``cfg`` trained by its task's trainer (loaded only when a row trains): resumed from its folder's
    ``last.pth`` (taking ``_RESUMED`` from ``cfg``), or started afresh over whatever the folder holds."""
    if isinstance(cfg, SegTrainConfig):
        from .segmentation import training as seg_training

        trainer = seg_training.train_segmentation
    else:
        from .classification import training

        trainer = training.train
    if resume:  # the trainers resume in cfg.output; the other fields come as values
        overrides = {name: getattr(cfg, name) for name in _RESUMED if name != "output"}
        return trainer(cfg, resume=True, overrides=overrides)
    return trainer(cfg, overwrite=True)


def train_row(cfg: RowConfig, overwrite: bool = False) -> dict[str, Any]:
    """The summary of the run ``cfg``: read from its ``summary.json`` when it finished, else trained (resumed
    from ``last.pth`` when the folder holds one). A folder of the same row trained with other settings is an
    error unless ``overwrite``."""
    out = Path(cfg.output)
    summary_file, checkpoint = out / "summary.json", out / "last.pth"
    if not overwrite and summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        _check_same_plan(summary.get("config", {}), cfg, out)
        _logger.info("%s: finished, read from %s", out.name, summary_file)
        return summary
    (out / FINAL_EVAL).unlink(missing_ok=True)  # the evaluation of an earlier run in this folder
    if not overwrite and checkpoint.is_file():
        _check_same_plan(load_training_checkpoint(checkpoint)["config"], cfg, out)
        _logger.info("%s: resuming from %s", out.name, checkpoint)
        return _train(cfg, resume=True)
    # no result and no checkpoint: whatever a killed start left there (logs) is replaced
    return _train(cfg, resume=False)


def final_evaluation(cfg: RowConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The run's evaluation at its last step: the summary's, or (a classification run stopped by ``max_steps``
    inside an epoch has none) the validation set evaluated with the run's last weights, kept in
    ``final_eval.json`` for the next call. A segmentation run evaluates at its last iteration
    (:func:`check_segmentation_plan`)."""
    if summary.get("final") or isinstance(cfg, SegTrainConfig):
        return summary.get("final") or {}
    out = Path(cfg.output)
    cached = out / FINAL_EVAL
    if cached.is_file():
        saved = json.loads(cached.read_text())
        if saved.get("step") == summary.get("steps"):
            return saved["eval"]
    from torch.utils.data import DataLoader

    from .classification import build_model, evaluate
    from .classification.training import build_datasets, folder_transforms
    from .data import collate_skipping_corrupt
    from .engine.distributed import DistInfo
    from .engine.optimizer import AMP_DTYPES

    state = load_training_checkpoint(out / "last.pth")
    _, val_set, classes, in_chans = build_datasets(cfg)
    model = build_model(cfg.updated(pretrained=None), cfg.num_classes or len(classes), in_chans)
    model.load_state_dict(state["model"])
    if cfg.dataset == "folder":  # the evaluation transform follows the model, as in training
        val_set.transform = folder_transforms(cfg, model)[1]
    info = DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    loader = DataLoader(val_set, cfg.batch_size * 2, num_workers=cfg.workers, collate_fn=collate_skipping_corrupt)
    result = evaluate(model.to(info.device), loader, info, AMP_DTYPES[cfg.amp])
    partial = cached.with_suffix(".json.tmp")
    partial.write_text(json.dumps({"step": state["step"], "eval": result}, indent=2))
    partial.replace(cached)
    return result


def deploy_model(name: str) -> nn.Module:
    """timm's ``name`` in the form its size is counted in: ImageNet head, no auxiliary head, re-parameterised."""
    model = timm.create_model(name, **({"with_aux_head": False} if builds_overlock(name) else {}))
    return timm.utils.reparameterize_model(model.eval(), inplace=True)


@dataclass
class ModelCost:
    """Size and inference speed of one model."""

    params_m: float
    gmacs: float  # at the runs' image size
    gmacs_224: float
    images_per_s: float


def measure_models(names: Sequence[str], img_size: int, batch_size: int = 16, iters: int = 5,
                   warmup: int = 1) -> dict[str, ModelCost]:
    """Parameters, MACs (at ``img_size`` and 224) and inference throughput of each model; speed is the median of
    ``iters`` timed batches of ``batch_size`` images at ``img_size``, the models stepped round-robin so that a
    shared machine's changing load hits them alike. OverLoCK models run as ``optimize_for_inference`` converts
    them."""
    models = {name: deploy_model(name) for name in dict.fromkeys(names)}
    sizes = {
        name: (count_params(m), count_macs(m, (3, img_size, img_size)), count_macs(m, (3, 224, 224)))
        for name, m in models.items()
    }
    fast = {name: optimize_for_inference(m, inplace=True) if builds_overlock(name) else m
            for name, m in models.items()}
    images = torch.randn(batch_size, 3, img_size, img_size)

    def step(model: nn.Module):
        def run() -> None:
            with torch.inference_mode():
                model(images)
        return run

    times = time_round_robin([step(m) for m in fast.values()], warmup, iters)
    return {
        name: ModelCost(params / 1e6, macs / 1e9, macs_224 / 1e9, batch_size / statistics.median(seconds))
        for (name, (params, macs, macs_224)), seconds in zip(sizes.items(), times)
    }


def segmentation_gmacs(cfg: SegTrainConfig, num_classes: int) -> float:
    """GMACs of ``cfg``'s UperNet (``num_classes`` outputs) on one ``crop_size`` image, re-parameterised and without
    its auxiliary head (which only the training loss uses)."""
    model = build_segmenter(cfg.updated(pretrained=None, weights=None, aux_channels=0), num_classes)
    model = timm.utils.reparameterize_model(model.eval(), inplace=True)
    return count_macs(model, (3, cfg.crop_size, cfg.crop_size)) / 1e9


def _best(value: float | None) -> float | None:
    """A run's best evaluation, None where it never evaluated (the trainers' -1)."""
    return value if value is not None and value >= 0 else None


def table_row(row: AblationRow, summary: dict[str, Any], final: dict[str, Any], cost: ModelCost,
              seg_gmacs: float | None = None) -> dict[str, Any]:
    """One line of the table: the row, its model's cost, its run's figures and the paper's. A classification run
    gives its final top-1 (``final``: the evaluation at its last step) and best epoch-end top-1 (none when no
    epoch ended); a segmentation run (``seg_gmacs``: its UperNet's MACs given) its final mIoU and aAcc and its
    best mIoU."""
    line = {
        "row": row.key, "label": row.label, "model": row.model, **asdict(cost), "steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds"), "paper_params_m": row.paper_params_m,
        "paper_gflops": row.paper_gflops,
    }
    if seg_gmacs is None:
        return {**line, "top1": final.get("top1"), "best_top1": _best(summary.get("best_top1")),
                "paper_top1": row.paper_top1}
    return {**line, "seg_gmacs": seg_gmacs, "miou": final.get("mIoU"), "aacc": final.get("aAcc"),
            "best_miou": _best(summary.get("best_miou")), "paper_miou": row.paper_miou}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_table(lines: Sequence[dict[str, Any]], out: str | Path, note: str = "",
                columns: Sequence[str] = COLUMNS, metric: str = "top1") -> list[Path]:
    """``table.csv`` (full figures), ``table.md`` (rounded, with ``note`` under it), both of ``columns``
    (``COLUMNS`` or ``SEG_COLUMNS``), and ``table.png`` (the column ``metric`` against MACs at 224, each point
    labelled with its row) in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.csv", out / "table.md", out / "table.png"]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({k: ("" if line.get(k) is None else line.get(k)) for k in columns} for line in lines)
    table = ["| " + " | ".join(_HEADERS[k] for k in columns) + " |", "|" + " --- |" * len(columns)]
    table += ["| " + " | ".join(_cell(line.get(k)) for k in columns) + " |" for line in lines]
    paths[1].write_text("\n".join(table) + ("\n\n" + note if note else "") + "\n")
    _plot(lines, paths[2], metric)
    return paths


def _plot(lines: Sequence[dict[str, Any]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for line in lines:
        if line.get(metric) is None:
            continue
        ax.scatter(line["gmacs_224"], line[metric], s=50)
        ax.annotate(line["row"], (line["gmacs_224"], line[metric]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set(xlabel="backbone GMACs at 224 px", ylabel=f"final {_HEADERS[metric]}",
           title="ablation: accuracy against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_ablation(rows: Sequence[AblationRow], base: RowConfig, out: str | Path, given: Iterable[str] = (),
                 overwrite: bool = False, speed_batch: int = 16, speed_iters: int = 5,
                 pretrained_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Train (or read back, or resume) every row with ``base``'s recipe (classification or segmentation), budget
    and seed, each in its folder under ``out`` (starting from its run under ``pretrained_dir`` when given), then
    measure the rows' models and write the table; returns the table's lines."""
    segmentation = isinstance(base, SegTrainConfig)
    if segmentation:
        check_segmentation_plan(rows, base)
    configs = [row_config(base, row, out, list(given), pretrained_dir) for row in rows]
    missing = [cfg.pretrained for cfg in configs if pretrained_dir and not Path(cfg.pretrained).is_file()]
    if missing:
        raise FileNotFoundError(f"--pretrained-dir {pretrained_dir}: no {', '.join(missing)} (each row starts from "
                                f"its own run there)")
    summaries = []
    for row, cfg in zip(rows, configs):
        _logger.info("row %s (%s): %s", row.key, row.label, cfg.output)
        summaries.append(train_row(cfg, overwrite))
    img_size = base.crop_size if segmentation else base.img_size
    costs = measure_models([row.model for row in rows], img_size, speed_batch, speed_iters)
    finals = [final_evaluation(cfg, summary) for cfg, summary in zip(configs, summaries)]
    speed = (f"images/s: {'backbone ' if segmentation else ''}inference, batch {speed_batch}, {img_size} px, "
             f"median of {speed_iters} batches on {torch.get_num_threads()} CPU threads.")
    start = f", backbones from {pretrained_dir}/<table>_<row>/best.pth" if pretrained_dir is not None else ""
    if segmentation:
        num_classes = len(read_classes(Path(base.data_dir), base.dataset))
        seg_gmacs = {cfg.backbone: segmentation_gmacs(cfg, num_classes) for cfg in configs}
        lines = [table_row(row, summary, final, costs[row.model], seg_gmacs[row.model])
                 for row, summary, final in zip(rows, summaries, finals)]
        note = (f"UperNet trained on {base.dataset} ({base.data_dir}) at {base.crop_size} px crops, {base.iters} "
                f"iterations, global batch {base.global_batch}, seed {base.seed}{start}; mIoU and aAcc: "
                f"{base.test_mode} evaluation at the last iteration. Params and MACs: backbone in its ImageNet "
                f"deploy form (no auxiliary head); UperNet GMACs: {num_classes} classes, one {base.crop_size} px "
                f"crop, no auxiliary head. {speed} Paper figures: params and GFLOPs ImageNet-1k at 224 px, mIoU "
                f"ADE20K (UperNet, 80k iterations).")
        write_table(lines, out, note, SEG_COLUMNS, "miou")
        return lines
    lines = [table_row(row, summary, final, costs[row.model])
             for row, summary, final in zip(rows, summaries, finals)]
    budget = f"{base.max_steps} steps" if base.max_steps else f"{base.epochs} epochs"
    note = (f"Trained on {base.dataset} ({base.data_dir or 'default location'}) at {base.img_size} px, {budget}, "
            f"batch {base.batch_size}, seed {base.seed}{start}. Params and MACs: ImageNet deploy form (no auxiliary "
            f"head). {speed} Paper figures: ImageNet-1k, 224 px.")
    write_table(lines, out, note)
    return lines

