"""A run folder's logs: its CSV files (cut back to the checkpoint when a killed run resumes), TensorBoard,
summary.json and the curves plot."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

_logger = logging.getLogger(__name__)

# what a run writes into its folder, whatever its task; a new run removes them (a task names its own extra files)
RUN_FILES = ("last.pth", "best.pth", "ema.pth", "best.safetensors", "ema.safetensors", "metrics.csv", "steps.csv",
             "summary.json", "curves.png")


def prepare_output(out: Path, resume: bool, overwrite: bool, extra_files: tuple[str, ...] = ()) -> None:
    """Refuse to write into a run folder that has results unless resuming it or told to overwrite; a new run
    starts without the files of :data:`RUN_FILES` and ``extra_files``."""
    if resume:
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, *extra_files):
        (out / name).unlink(missing_ok=True)


class CsvLog:
    """A CSV file with fixed columns, appended to row by row (a row's missing columns are left empty)."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])

    def truncate(self, key: str, last: int) -> None:
        """Keep only the rows whose ``key`` is at most ``last`` (a resumed run drops what its killed run logged
        after its checkpoint)."""
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r[key]) <= last]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def open_tensorboard(out: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard writer on ``out/tb`` (dropping events after ``purge_step`` when resuming), or None when
    tensorboard is not installed (the CSV logs remain)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _logger.warning("tensorboard is not installed; writing CSV logs only")
        return None
    return SummaryWriter(str(out / "tb"), purge_step=purge_step)


def finish_run_logs(out: Path, summary: dict[str, Any], writer: Any, plot: Callable[[Path], None]) -> None:
    """The main process's end of a run: ``summary.json``, the TensorBoard writer closed, ``curves.png`` drawn."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if writer:
        writer.close()
    plot(out)


def read_run_log(out: Path, name: str) -> list[dict[str, str]]:
    """The rows of one of a run's CSV logs (none where it does not exist yet)."""
    path = out / name
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


Curve = tuple[str, str, str]  # a metrics.csv column, its matplotlib line style, its legend label


def save_run_curves(out: Path, loss_curves: Sequence[Curve], metric_curves: Sequence[Curve], x_label: str,
                    loss_label: str, metric_label: str, metric_title: str) -> None:
    """``out/curves.png`` from the run's logs: a loss panel (the per-step training loss of steps.csv, then
    ``loss_curves``) beside a panel of ``metric_curves``, both over the step of each metrics.csv row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, evals = read_run_log(out, "steps.csv"), read_run_log(out, "metrics.csv")
    eval_steps = [int(r["step"]) for r in evals]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1, label="train (step)")
    for ax, curves in ((loss_ax, loss_curves), (metric_ax, metric_curves)):
        for column, style, label in curves:
            ax.plot(eval_steps, [float(r[column]) for r in evals], style, label=label)
    loss_ax.set(xlabel=x_label, ylabel=loss_label, title="loss")
    metric_ax.set(xlabel=x_label, ylabel=metric_label, title=metric_title)
    for ax in (loss_ax, metric_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
