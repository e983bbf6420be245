"""``overlock train``: train or fine-tune a model with a recipe preset; every field can be overridden.

With no arguments it runs the main job: a small OverLoCK on Fashion-MNIST (Debian's
dataset-fashion-mnist). Several processes: ``torchrun --nproc_per_node N -m overlock.cli.main train ...``
or ``torchrun --nproc_per_node N $(which overlock) train ...``.
"""
from __future__ import annotations

import argparse

from overlock.classification.config import PRESETS, TrainConfig, preset, with_ablation_row

from .args import add_config_options, add_run_folder_options, preset_with_options, resume_overrides

TRAIN_HELP = {
    "model": "timm model name (any timm model works, for comparisons) or an ablation row such as table6/dds_model",
    "model_kwargs": "extra model arguments as JSON, e.g. '{\"kernel_sizes\": [5, 5, 5, 5]}'",
    "pretrained": "checkpoint file to start from (official weights or ours); heads reset for a new class count",
    "dataset": "'folder' (DATA_DIR/train/CLASS/*.jpg and DATA_DIR/val/CLASS/*.jpg) or 'fashion_mnist'",
    "lr": "learning rate (default: base-lr x global batch / 1024)",
    "amp": "mixed precision: none, bf16 or fp16",
    "grad_checkpointing": "blocks to checkpoint per stage, four numbers (e.g. 2 2 6 2)",
    "auto_augment": "timm RandAugment spec, or 'none'",
    "save_every": "also checkpoint every N optimizer steps",
    "max_steps": "stop after N optimizer steps (0: no limit)",
    "bn_eval": "keep BatchNorm statistics frozen while training",
    "skip_unknown_classes": "leave out (with a warning) val/ class folders that match no train/ class, "
                            "instead of stopping",
}
TRAIN_CHOICES = {"amp": ("none", "bf16", "fp16"), "dataset": ("folder", "fashion_mnist")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), help="recipe to start from (default: see below)")
    add_run_folder_options(parser)
    add_config_options(parser, TrainConfig, TRAIN_HELP, TRAIN_CHOICES,
                       overrides={"grad_checkpointing": dict(type=int, nargs=4)})
    parser.epilog = (
        "Default preset: the --model's own preset when it has one (overlock_xt/t/s/b: the paper's ImageNet "
        "recipe), an ablation row's own ('ablation': 120 epochs), 'fashion_mnist' when no --data-dir is given, "
        "else overlock_xt."
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset chosen by the arguments, with every given option applied on top."""
    from overlock.models import resolve_model_name, row_for_model

    given = vars(args)
    row = row_for_model(given["model"]) if given.get("model") else None  # a table name or an ablation timm name
    if row is None and given.get("model"):
        resolve_model_name(given["model"])  # a table name that is no row: the error now, before any data is read
    name = args.preset
    if name is None:
        if row is not None:
            name = row.preset
        elif given.get("model") in PRESETS:
            name = given["model"]
        elif given.get("data_dir") is None and given.get("dataset") in (None, "fashion_mnist"):
            name = "fashion_mnist"
        else:
            name = "overlock_xt"
    cfg = preset_with_options(preset(name), given, "model")  # 'none' given on the command line stays None
    return with_ablation_row(cfg, row, given) if row is not None else cfg


def run(args: argparse.Namespace) -> int:
    from overlock.classification.training import train

    cfg = config_from_args(args)
    overrides = resume_overrides(args, TrainConfig) if args.resume else None
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    final = summary["final"]
    if final:
        print(
            f"{summary['model']}: top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  "
            f"({summary['epochs']} epochs, {summary['train_seconds']:.0f} s, {summary['params_m']:.2f} M params)"
        )
    print(f"run folder: {cfg.output} (metrics.csv, summary.json, curves.png, last/best checkpoints)")
    return 0
