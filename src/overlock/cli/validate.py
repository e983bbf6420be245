"""``overlock validate``: top-1/top-5 and loss on an image folder, and the paper's robustness sets.

Class folders are matched to the model's outputs by name (see :mod:`overlock.data.class_folders`): a missing
folder is simply not scored, and one that matches no class stops the command, or is skipped with a warning
under ``--skip-unknown-classes``. ImageNet-V2's folders are output numbers; ImageNet-A and -R hold 200 classes,
so the model's logits are restricted to those classes before scoring.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from overlock.classification.inference import ROBUSTNESS_SETS

from .args import add_model_option, model_name, non_negative_int, positive_int, unit_fraction

_AMP = ("none", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional=True)
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors")
    parser.add_argument("--data-dir", help="folder of class folders (e.g. ImageNet val)")
    for name in ROBUSTNESS_SETS:
        parser.add_argument(f"--{name}", metavar="DIR", help=f"{name} folder tree")
    parser.add_argument("--skip-unknown-classes", action="store_true",
                        help="leave out (with a warning) class folders that match none of the model's classes, "
                             "instead of stopping")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=4)
    parser.add_argument("--img-size", type=positive_int, help="input size (default: the model's)")
    parser.add_argument("--crop-pct", type=unit_fraction, help="centre-crop fraction (default: the model's)")
    parser.add_argument("--amp", choices=_AMP, default="none")


def run(args: argparse.Namespace) -> int:
    sets = {"val": args.data_dir, **{n: getattr(args, n.replace("-", "_")) for n in ROBUSTNESS_SETS}}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise ValueError("nothing to validate: give --data-dir and/or a robustness set folder")
    for name, folder in sets.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{name}: folder not found: {folder}")
    return _validate(args, sets)


def _validate(args: argparse.Namespace, sets: dict[str, str]) -> int:
    import torch
    from torch.utils.data import DataLoader

    from overlock.data import ImageFolderDataset, collate_skipping_corrupt
    from overlock.classification.evaluate import evaluate
    from overlock.classification.inference import load_model, prepare_for_inference, set_classes
    from overlock.engine.distributed import init_distributed

    name = model_name(args)
    loaded = load_model(name, args.weights, args.img_size, args.crop_pct)
    info = init_distributed()
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    model = prepare_for_inference(loaded.model.to(info.device), autocast=amp is not None)
    rows = []
    for name, folder in sets.items():
        classes = set_classes(name, loaded, folder)
        dataset = ImageFolderDataset(folder, loaded.transform, classes.names, args.skip_unknown_classes)
        loader = DataLoader(dataset, args.batch_size, num_workers=args.workers, collate_fn=collate_skipping_corrupt)
        result = evaluate(model, loader, info, amp, class_subset=classes.outputs)
        rows.append((name, result))
        skipped = f", {len(dataset.skipped_folders)} unknown class folders skipped" if dataset.skipped_folders else ""
        print(f"{name}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
              f"({result['images']} images, {result['skipped']} unreadable skipped; {dataset.present_classes} of "
              f"{len(classes.names)} classes present{skipped})")
    print(f"\n{'set':<18} {'top-1':>7} {'top-5':>7} {'loss':>8} {'images':>8}")
    for name, r in rows:
        print(f"{name:<18} {r['top1']:>7.2f} {r['top5']:>7.2f} {r['loss']:>8.4f} {r['images']:>8}")
    print(f"model: {loaded.name}{' (run checkpoint)' if name is None else ''}; preprocessing: {loaded.transform}")
    return 0
