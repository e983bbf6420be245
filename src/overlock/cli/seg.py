"""``overlock seg``: semantic segmentation with the official UperNet.

``overlock seg train``: train with a recipe preset (``upernet_overlock_t/s/b``: the official ADE20K recipe;
``shapes``: a small UperNet on ``overlock data shapes`` output, minutes on a CPU); every field can be overridden.
Several processes: ``torchrun --nproc_per_node N -m overlock.cli.main seg train ...``.

``overlock seg validate``: mIoU, mAcc, aAcc and per-class IoU of a checkpoint (an official
``upernet_overlock_*_ade20k.pth`` or a run's ``best.pth``) on a validation set, whole-image or sliding-window,
optionally with flip and multi-scale testing.
"""
from __future__ import annotations

import argparse
import json
import math

from overlock.segmentation.config import SEG_PRESETS, SegTrainConfig, seg_preset

from .args import add_config_options, add_run_folder_options, preset_with_options, resume_overrides

SEG_HELP = {
    "backbone": "OverLoCK variant (timm name) under the UperNet, or an ablation row such as table6/dds_model",
    "model_kwargs": "extra backbone arguments as JSON, e.g. '{\"output_stride\": 16}'",
    "pretrained": "backbone checkpoint to start from (ImageNet weights, e.g. overlock_t_in1k_224.pth)",
    "weights": "whole UperNet checkpoint to start from (official ADE20K weights or a run's)",
    "dataset": "data layout: 'ade20k' (images|annotations/training|validation) or 'folder' "
               "(images|masks/train|val, classes.txt)",
    "aux_channels": "auxiliary head width (0: no auxiliary head)",
    "global_batch": "images per optimizer step over all processes (gradients accumulated to reach it)",
    "batch_size": "images per process and forward pass",
    "amp": "mixed precision: none, bf16 or fp16",
    "eval_every": "evaluate and checkpoint every N iterations",
    "save_every": "also checkpoint every N iterations",
    "max_steps": "stop after N iterations in all (resume later with --resume)",
    "reduce_zero_label": "read mask value 0 as unlabelled and c as class c - 1 (default: for ADE20K)",
}
SEG_CHOICES = {"amp": ("none", "bf16", "fp16"), "dataset": ("ade20k", "folder"), "test_mode": ("whole", "slide")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="seg_command", required=True, metavar="{train,validate}")
    _add_train(commands.add_parser("train", help="train an UperNet (official ADE20K recipe or a folder data set)"))
    _add_validate(commands.add_parser("validate", help="mIoU, mAcc, aAcc and per-class IoU of a checkpoint"))


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(SEG_PRESETS), help="recipe to start from (default: the "
                        "backbone's upernet_* preset, or upernet_overlock_t)")
    add_run_folder_options(parser)
    add_config_options(parser, SegTrainConfig, SEG_HELP, SEG_CHOICES)
    parser.add_argument("--model", dest="backbone", default=argparse.SUPPRESS, help="the same as --backbone")


def _add_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint: official upernet_overlock_*_ade20k.pth or a "
                                                         "run's best.pth / last.pth")
    parser.add_argument("--backbone", help="OverLoCK variant of the checkpoint (default: recognised from its keys)")
    parser.add_argument("--data-dir", required=True, help="data set root (see --dataset)")
    parser.add_argument("--dataset", choices=("ade20k", "folder"), default="ade20k", help="data layout")
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole", help="inference mode")
    parser.add_argument("--crop-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="sliding-window size")
    parser.add_argument("--stride", type=int, nargs=2, default=(341, 341), metavar=("H", "W"),
                        help="sliding-window stride")
    parser.add_argument("--scale", type=int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"),
                        help="test pipeline: fit images into LONG x SHORT (keeping the aspect ratio)")
    parser.add_argument("--flip", action="store_true", help="add horizontally mirrored passes")
    parser.add_argument("--ratios", type=float, nargs="+", default=(1.0,),
                        help="scale ratios of the test pipeline (multi-scale: 0.5 0.75 1.0 1.25 1.5 1.75)")
    parser.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                        help="read mask value 0 as unlabelled (default: for ADE20K)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from overlock.segmentation.data import SegmentationDataError
    from overlock.models import CheckpointMismatchError
    from overlock.engine.checkpoint import CheckpointError
    from overlock.engine.loop import NonFiniteLossError

    command = _train if args.seg_command == "train" else _validate
    try:
        return command(args)
    except (CheckpointError, CheckpointMismatchError, NonFiniteLossError, SegmentationDataError, FileExistsError,
            FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"overlock seg {args.seg_command}: {exc}") from exc


def percent(value: float) -> str:
    """A metric in percent for the printed report: two decimals, or 'n/a' where it is not defined (NaN: a class
    never labelled, or aAcc when every pixel is ignored)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def config_from_args(args: argparse.Namespace) -> SegTrainConfig:
    """The preset chosen by the arguments, with every given option applied on top."""
    from overlock.models import resolve_model_name, row_for_model

    given = vars(args)
    row = row_for_model(given["backbone"]) if given.get("backbone") else None
    if row is None and given.get("backbone"):
        resolve_model_name(given["backbone"])  # a table name that is no row: the error now, before any data is read
    default = "ablation" if row is not None else "upernet_overlock_t"  # an ablation row: the ablation schedule
    name = args.preset or next((p for p, c in SEG_PRESETS.items() if c.backbone == given.get("backbone")), default)
    cfg = preset_with_options(seg_preset(name), given, "backbone")
    return cfg.updated(backbone=row.model) if row is not None else cfg


def _train(args: argparse.Namespace) -> int:
    from overlock.segmentation.training import train_segmentation

    cfg = config_from_args(args)
    overrides = resume_overrides(args, SegTrainConfig) if args.resume else None
    summary = train_segmentation(cfg, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    final = summary["final"]
    if final:
        print(f"{summary['backbone']} UperNet: mIoU {percent(final['mIoU'])}  mAcc {percent(final['mAcc'])}  "
              f"aAcc {percent(final['aAcc'])}  ({summary['steps']} iterations, {summary['train_seconds']:.0f} s)")
    print(f"run folder: {cfg.output} (metrics.csv, per_class.csv, summary.json, curves.png, last/best checkpoints)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import torch

    from overlock.engine.distributed import init_distributed
    from overlock.segmentation.data import SegmentationDataset
    from overlock.segmentation.evaluate import evaluate_segmentation
    from overlock.segmentation.inference import SegInference, load_segmenter

    loaded = load_segmenter(args.weights, args.backbone)
    dataset = SegmentationDataset(args.data_dir, args.split, args.dataset, classes=loaded.classes,
                                  reduce_zero_label=args.reduce_zero_label)
    if dataset.num_classes != loaded.model.num_classes:
        raise ValueError(f"the data set has {dataset.num_classes} classes, the model {loaded.model.num_classes}")
    settings = SegInference(mode=args.mode, crop_size=tuple(args.crop_size), stride=tuple(args.stride),
                            scale=tuple(args.scale), ratios=tuple(args.ratios), flip=args.flip)
    info = init_distributed()
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    result = evaluate_segmentation(loaded.model.to(info.device), dataset, settings, info, args.workers, amp)
    if info.is_main:
        print(f"{'class':<24} {'IoU':>7} {'Acc':>7}")
        for name, values in result["per_class"].items():
            print(f"{name:<24} {percent(values['IoU']):>7} {percent(values['Acc']):>7}")
        print(f"\naAcc {percent(result['aAcc'])}  mIoU {percent(result['mIoU'])}  mAcc {percent(result['mAcc'])}  "
              f"({result['images']} images, {result['skipped']} skipped; {settings.mode}, ratios "
              f"{list(settings.ratios)}{', flip' if settings.flip else ''}; {loaded.description})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    return 0
