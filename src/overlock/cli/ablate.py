"""``overlock ablate TABLE``: train the rows of an ablation table on the same data, budget and seed, and write one
comparison table (``OUT/table.md``, ``OUT/table.csv``) and its plot (``OUT/table.png``).

Each row trains in ``OUT/<table>_<row>`` as ``overlock train --model <row>`` would train it, with the recipe of
``--preset`` (default: the small Fashion-MNIST one) and every training option given here applied to all rows. Run
it again after a kill and finished rows are read back, the unfinished one resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from overlock.classification.config import PRESETS, TrainConfig, preset

from .args import add_config_options, positive_int, preset_with_options
from .train import TRAIN_CHOICES, TRAIN_HELP

_OWN = {
    "output": "folder of the table; each row runs in OUTPUT/<table>_<row> (default: runs/ablate/TABLE)",
    "data_dir": "the data of every row: image folders (DATA_DIR/train/CLASS, DATA_DIR/val/CLASS), or with "
                "--dataset fashion_mnist the IDX files (default: Debian's dataset-fashion-mnist)",
    "epochs": "epochs of every row (the budget; see also --max-steps)",
    "max_steps": "stop every row after N optimizer steps (0: no limit)",
    "seed": "seed of every row",
}
_NOT_HERE = ("model", "model_kwargs")  # each row trains its own model: refused with a clear error, not in the help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", nargs="?", help="an ablation table: table6, tableA ... tableG, table7")
    parser.add_argument("--rows", nargs="+", default=[], metavar="KEY",
                        help="rows by key (e.g. table6/dds_model tableD/aux_0_4), after the TABLE's rows if one is "
                             "given")
    parser.add_argument("--preset", choices=list(PRESETS), default="fashion_mnist",
                        help="the recipe every row trains with (default: fashion_mnist)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain rows whose folders hold runs, instead of reading or resuming them")
    parser.add_argument("--speed-batch", type=positive_int, default=16, help="batch of the speed measurement")
    parser.add_argument("--speed-iters", type=positive_int, default=5, help="timed batches (the median counts)")
    helps = {**TRAIN_HELP, **_OWN, **dict.fromkeys(_NOT_HERE, argparse.SUPPRESS)}
    add_config_options(parser, TrainConfig, helps, TRAIN_CHOICES,
                       overrides={"grad_checkpointing": {"type": int, "nargs": 4}})
    parser.add_argument("--out", dest="output", default=argparse.SUPPRESS, help="the same as --output")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, list[str]]:
    """The shared recipe: ``--preset`` with every given option on top, and the names of the given options. With
    ``--data-dir`` of image folders and no ``--dataset``, the rows train on those folders."""
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    named = [k for k in _NOT_HERE if k in given]
    if named:
        raise ValueError(f"--{named[0].replace('_', '-')}: every row trains its own model; choose rows with TABLE "
                         f"or --rows")
    data_dir = given.get("data_dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    if data_dir is not None and "dataset" not in given and (Path(data_dir) / "train").is_dir():
        given["dataset"] = "folder"
    given.setdefault("output", str(Path("runs") / "ablate" / (args.table or "rows")))
    return preset_with_options(preset(args.preset), given, "model"), sorted(given)


def run(args: argparse.Namespace) -> int:
    from overlock.ablate import run_ablation, select_rows

    rows = select_rows(args.table, args.rows)
    base, given = config_from_args(args)
    lines = run_ablation(rows, base, base.output, given, overwrite=args.overwrite, speed_batch=args.speed_batch,
                         speed_iters=args.speed_iters)
    print(Path(base.output, "table.md").read_text(), end="")
    print(f"wrote {base.output}/table.md, table.csv and table.png ({len(lines)} rows)")
    return 0
