"""An ablation table from one call: each chosen row trained on the same data, budget and seed, then one
comparison table (``table.md``, ``table.csv``) and a plot (``table.png``).

Each row is an ordinary training run of :func:`overlock.classification.training.train` in its own folder
(``OUT/<table>_<row>``), configured as ``overlock train --model <row>`` configures it: the shared recipe with the
row's model and training options. A call that was killed picks up where it stopped: a row whose folder holds a
finished run of the same plan is read back from its ``summary.json``, one that holds a checkpoint resumes from it.

Size and speed are of the row's model in its ImageNet deploy form (3 channels, 1000 classes, no auxiliary head,
re-parameterised; what ``overlock info`` counts and the paper's figures are of): parameters, MACs at the runs'
image size and at 224, and inference throughput measured round-robin over the rows (``overlock.benchmark``'s
timer) at one batch size and the runs' image size.
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

__all__ = [
    "COLUMNS", "ModelCost", "deploy_model", "final_evaluation", "measure_models", "row_config", "row_folder",
    "run_ablation", "select_rows", "table_row", "train_row", "write_table",
]

_logger = logging.getLogger(__name__)

# plan fields that may differ between a finished or checkpointed row and this call: where it runs and how it loads
_NOT_PLAN = ("output", "workers", "save_every")
FINAL_EVAL = "final_eval.json"  # a row's evaluation at its last step, where its run stopped inside an epoch
COLUMNS = [
    "row", "label", "model", "params_m", "gmacs", "gmacs_224", "images_per_s", "top1", "best_top1", "steps",
    "train_seconds", "paper_params_m", "paper_gflops", "paper_top1",
]


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


def row_config(base: TrainConfig, row: AblationRow, out: str | Path, given: Iterable[str] = ()) -> TrainConfig:
    """``base`` (the shared recipe, budget and seed) training ``row`` in its own folder under ``out``: the row's
    model with its own arguments only (the preset's model arguments belong to the preset's model) and the row's
    training options, except those named in ``given`` (set by the user for every row)."""
    cfg = with_ablation_row(base, row, given)
    return cfg.updated(model_kwargs={}, output=str(row_folder(out, row)))


def _plan(config: dict[str, Any]) -> dict[str, Any]:
    """A run configuration as JSON would store it, without the fields that may change between calls."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in _NOT_PLAN}


def _check_same_plan(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    ours, theirs = _plan(asdict(cfg)), _plan(saved)
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differing:
        changes = ", ".join(f"{k} {theirs.get(k)!r} -> {ours.get(k)!r}" for k in differing)
        raise ValueError(f"{where} holds a run of other settings ({changes}): choose another --out or pass "
                         f"--overwrite to retrain it")


def train_row(cfg: TrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """The summary of the run ``cfg``: read from its ``summary.json`` when it finished, else trained (resumed
    from ``last.pth`` when the folder holds one). A folder of the same row trained with other settings is an
    error unless ``overwrite``."""
    from .classification.training import train  # the training loop, loaded only when a row trains

    out = Path(cfg.output)
    summary_file, checkpoint = out / "summary.json", out / "last.pth"
    if not overwrite and summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        _check_same_plan(summary.get("config", {}), cfg, out)
        _logger.info("%s: finished, read from %s", cfg.model, summary_file)
        return summary
    (out / FINAL_EVAL).unlink(missing_ok=True)  # the evaluation of an earlier run in this folder
    if not overwrite and checkpoint.is_file():
        _check_same_plan(load_training_checkpoint(checkpoint)["config"], cfg, out)
        _logger.info("%s: resuming from %s", cfg.model, checkpoint)
        return train(cfg, resume=True, overrides=_NOT_PLAN + ("max_steps",))
    # no result and no checkpoint: whatever a killed start left there (logs) is replaced
    return train(cfg, overwrite=True)


def final_evaluation(cfg: TrainConfig, summary: dict[str, Any]) -> dict[str, float]:
    """The run's evaluation at its last step: the summary's, or (a run stopped by ``max_steps`` inside an epoch
    has none) the validation set evaluated with the run's last weights, kept in ``final_eval.json`` for the
    next call."""
    if summary.get("final"):
        return summary["final"]
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


def table_row(row: AblationRow, summary: dict[str, Any], final: dict[str, float], cost: ModelCost
              ) -> dict[str, Any]:
    """One line of the table: the row, its model's cost, its run's final top-1 (``final``: the evaluation at its
    last step) and best epoch-end top-1 (none when no epoch ended), the paper's figures."""
    best = summary.get("best_top1")
    return {
        "row": row.key, "label": row.label, "model": row.model, **asdict(cost),
        "top1": final.get("top1"), "best_top1": best if best is not None and best >= 0 else None,
        "steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds"), "paper_params_m": row.paper_params_m,
        "paper_gflops": row.paper_gflops, "paper_top1": row.paper_top1,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_table(lines: Sequence[dict[str, Any]], out: str | Path, note: str = "") -> list[Path]:
    """``table.csv`` (full figures), ``table.md`` (rounded, with ``note`` under it) and ``table.png`` (top-1
    against MACs at 224, each point labelled with its row) in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.csv", out / "table.md", out / "table.png"]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if line.get(k) is None else line.get(k)) for k in COLUMNS} for line in lines)
    headers = ["row", "label", "model", "params (M)", "GMACs (run size)", "GMACs (224)", "images/s", "top-1 (%)",
               "best top-1 (%)", "steps", "train s", "paper params (M)", "paper GFLOPs", "paper top-1 (%)"]
    table = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    table += ["| " + " | ".join(_cell(line.get(k)) for k in COLUMNS) + " |" for line in lines]
    paths[1].write_text("\n".join(table) + ("\n\n" + note if note else "") + "\n")
    _plot(lines, paths[2])
    return paths


def _plot(lines: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for line in lines:
        if line.get("top1") is None:
            continue
        ax.scatter(line["gmacs_224"], line["top1"], s=50)
        ax.annotate(line["row"], (line["gmacs_224"], line["top1"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set(xlabel="GMACs at 224 px", ylabel="final top-1 (%)", title="ablation: accuracy against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_ablation(rows: Sequence[AblationRow], base: TrainConfig, out: str | Path, given: Iterable[str] = (),
                 overwrite: bool = False, speed_batch: int = 16, speed_iters: int = 5) -> list[dict[str, Any]]:
    """Train (or read back, or resume) every row with ``base``'s recipe, budget and seed, each in its folder under
    ``out``, then measure the rows' models and write the table; returns the table's lines."""
    given = list(given)
    configs = [row_config(base, row, out, given) for row in rows]
    summaries = []
    for row, cfg in zip(rows, configs):
        _logger.info("row %s (%s): %s", row.key, row.label, cfg.output)
        summaries.append(train_row(cfg, overwrite))
    costs = measure_models([row.model for row in rows], base.img_size, speed_batch, speed_iters)
    finals = [final_evaluation(cfg, summary) for cfg, summary in zip(configs, summaries)]
    lines = [table_row(row, summary, final, costs[row.model])
             for row, summary, final in zip(rows, summaries, finals)]
    budget = f"{base.max_steps} steps" if base.max_steps else f"{base.epochs} epochs"
    note = (f"Trained on {base.dataset} ({base.data_dir or 'default location'}) at {base.img_size} px, {budget}, "
            f"batch {base.batch_size}, seed {base.seed}. Params and MACs: ImageNet deploy form (no auxiliary head). "
            f"images/s: inference, batch {speed_batch}, {base.img_size} px, median of {speed_iters} batches on "
            f"{torch.get_num_threads()} CPU threads. Paper figures: ImageNet-1k, 224 px.")
    write_table(lines, out, note)
    return lines

