"""``overlock ablate TABLE``: train the rows of an ablation table on the same data, budget and seed, and write one
comparison table (``OUT/table.md``, ``OUT/table.csv``) and its plot (``OUT/table.png``).

Each row trains in ``OUT/<table>_<row>`` as ``overlock train --model <row>`` would train it (``--task cls``, the
default: top-1), or as ``overlock seg train --model <row>`` would (``--task seg``: UperNet, mIoU), with the recipe
of ``--preset`` and every training option given here applied to all rows. Run it again after a kill and finished
rows are read back, the unfinished one resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from overlock.classification.config import PRESETS, TrainConfig, preset
from overlock.segmentation.config import SEG_PRESETS, SegTrainConfig, seg_preset

from .args import add_config_options, positive_int, preset_with_options
from .seg import SEG_CHOICES, SEG_HELP
from .train import TRAIN_CHOICES, TRAIN_HELP

TASKS = {"cls": "classification", "seg": "segmentation"}
_CONFIGS = {"cls": TrainConfig, "seg": SegTrainConfig}
_FIELDS = {task: {f.name for f in dataclasses.fields(config)} for task, config in _CONFIGS.items()}
_BOTH = _FIELDS["cls"] & _FIELDS["seg"]
_OWN = {
    "output": "folder of the table; each row runs in OUTPUT/<table>_<row> (default: runs/ablate/TABLE, with "
              "--task seg runs/ablate/TABLE_seg)",
    "data_dir": "the data of every row: image folders (DATA_DIR/train/CLASS, DATA_DIR/val/CLASS), or with "
                "--dataset fashion_mnist the IDX files (default: Debian's dataset-fashion-mnist); with --task seg "
                "ADE20K or a folder of images and masks (overlock data shapes writes one)",
    "dataset": "cls: 'folder' or 'fashion_mnist'; seg: 'ade20k' or 'folder' (implied by a DATA_DIR with train/ "
               "or masks/)",
    "aux_weight": "auxiliary loss weight of every row (cls: the Overview-Net head's, else the row's own; "
                  "seg: the FCN head's)",
    "pretrained": "one checkpoint every row starts from (see --pretrained-dir for each row its own)",
    "epochs": "epochs of every row (the budget; see also --max-steps)",
    "max_steps": "stop every row after N optimizer steps (0: no limit; cls only: a seg row's budget is --iters)",
    "iters": "iterations of every row (the budget: the poly schedule ends there, with the evaluation reported)",
    "seed": "seed of every row",
    "lr": "learning rate of every row (cls default: base-lr x global batch / 1024; seg: the preset's)",
    "save_every": "also checkpoint every N optimizer steps",
}
_NOT_HERE = ("model", "backbone", "model_kwargs", "weights")  # each row trains its own model: refused, not in the help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", nargs="?", help="an ablation table: table6, tableA ... tableG, table7")
    parser.add_argument("--rows", nargs="+", default=[], metavar="KEY",
                        help="rows by key (e.g. table6/dds_model tableD/aux_0_4), after the TABLE's rows if one is "
                             "given")
    parser.add_argument("--task", choices=list(TASKS), default="cls",
                        help="cls: classification, top-1 (overlock train); seg: UperNet segmentation, mIoU "
                             "(overlock seg train). Default: cls")
    parser.add_argument("--preset", help=f"the recipe every row trains with; cls: {', '.join(PRESETS)} (default: "
                                         f"fashion_mnist); seg: {', '.join(SEG_PRESETS)} (default: ablation, "
                                         f"ADE20K 80k iterations; shapes: generated shapes)")
    parser.add_argument("--pretrained-dir", metavar="DIR",
                        help="each row starts from its own earlier run, DIR/<table>_<row>/best.pth (e.g. the folder "
                             "of a classification table: the seg rows' backbones from their ImageNet runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain rows whose folders hold runs, instead of reading or resuming them")
    parser.add_argument("--speed-batch", type=positive_int, default=16, help="batch of the speed measurement")
    parser.add_argument("--speed-iters", type=positive_int, default=5, help="timed batches (the median counts)")
    helps = {**TRAIN_HELP, **SEG_HELP, **_OWN, **dict.fromkeys(_NOT_HERE, argparse.SUPPRESS)}
    choices = {**TRAIN_CHOICES, "dataset": ("folder", "fashion_mnist", "ade20k")}
    add_config_options(parser, TrainConfig, helps, choices, only=_BOTH)
    add_config_options(parser.add_argument_group("classification rows (--task cls)"), TrainConfig, helps, choices,
                       overrides={"grad_checkpointing": {"type": int, "nargs": 4}}, only=_FIELDS["cls"] - _BOTH)
    add_config_options(parser.add_argument_group("segmentation rows (--task seg)"), SegTrainConfig, helps,
                       SEG_CHOICES, only=_FIELDS["seg"] - _BOTH)
    parser.add_argument("--out", dest="output", default=argparse.SUPPRESS, help="the same as --output")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig | SegTrainConfig, list[str]]:
    """The shared recipe of ``--task``: ``--preset`` with every given option on top, and the names of the given
    options. With ``--data-dir`` of image folders (cls) or of images and masks (seg) and no ``--dataset``, the rows
    train on that folder."""
    task = args.task
    given = {k: v for k, v in vars(args).items() if k in _FIELDS["cls"] | _FIELDS["seg"]}
    named = [k for k in _NOT_HERE if k in given]
    if named:
        raise ValueError(f"{_flag(named[0])}: every row trains its own model; choose rows with TABLE or --rows")
    other = sorted(set(given) - _FIELDS[task])
    if other:
        raise ValueError(f"{_flag(other[0])} is an option of {TASKS['seg' if task == 'cls' else 'cls']} rows, not of "
                         f"--task {task} (see 'overlock ablate -h')")
    if task == "seg" and given.get("dataset") == "fashion_mnist":
        raise ValueError("--dataset fashion_mnist: segmentation rows read 'ade20k' or 'folder' data")
    if task == "seg" and "lr" in given and given["lr"] is None:
        raise ValueError("--lr none: segmentation rows need a learning rate")
    if args.pretrained_dir is not None and not Path(args.pretrained_dir).is_dir():
        raise FileNotFoundError(f"--pretrained-dir {args.pretrained_dir}: no such folder")
    if args.pretrained_dir is not None and "pretrained" in given:
        raise ValueError("--pretrained and --pretrained-dir: give one")
    data_dir = given.get("data_dir")
    if task == "seg" and data_dir is None:
        raise ValueError("--task seg needs --data-dir: ADE20K (ADEChallengeData2016) or a folder of images and masks "
                         "(overlock data shapes DIR writes one)")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    folders = Path(data_dir or ".") / ("masks" if task == "seg" else "train")
    if data_dir is not None and "dataset" not in given and folders.is_dir():
        given["dataset"] = "folder"
    table = args.table or "rows"
    given.setdefault("output", str(Path("runs") / "ablate" / (table if task == "cls" else f"{table}_seg")))
    if task == "seg":
        base = preset_with_options(seg_preset(args.preset or "ablation"), given, "backbone")
    else:
        base = preset_with_options(preset(args.preset or "fashion_mnist"), given, "model")
    return base, sorted(given)


def run(args: argparse.Namespace) -> int:
    from overlock.ablate import run_ablation, select_rows

    rows = select_rows(args.table, args.rows)
    base, given = config_from_args(args)
    lines = run_ablation(rows, base, base.output, given, overwrite=args.overwrite, speed_batch=args.speed_batch,
                         speed_iters=args.speed_iters, pretrained_dir=args.pretrained_dir)
    print(Path(base.output, "table.md").read_text(), end="")
    print(f"wrote {base.output}/table.md, table.csv and table.png ({len(lines)} rows)")
    return 0
