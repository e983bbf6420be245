"""``overlock validate``: top-1/top-5 and loss on an image folder, and the paper's robustness sets.

ImageNet-V2 and -Sketch are 1000-class folders; ImageNet-A and -R hold 200 classes, so the model's
logits are restricted to those classes (the indices timm ships for them) before scoring.
"""
from __future__ import annotations

import argparse
import pkgutil
from pathlib import Path

from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch.utils.data import DataLoader

from overlock.data import ImageFolderDataset, collate_skipping_corrupt
from overlock.train.distributed import init_distributed
from overlock.train.evaluate import evaluate
from overlock.train.models import load_for_eval

ROBUSTNESS_SETS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="timm model name (optional with a run checkpoint)")
    parser.add_argument("--weights", help="checkpoint file: official weights or an overlock run's best.pth")
    parser.add_argument("--data-dir", help="folder of CLASS/ sub-folders (e.g. ImageNet val)")
    for name in ROBUSTNESS_SETS:
        parser.add_argument(f"--{name}", metavar="DIR", help=f"{name} folder tree")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--img-size", type=int, help="input size (default: the model's)")
    parser.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the model's)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")


def subset_indices(name: str) -> list[int] | None:
    """Output indices of the 1000-class model for the 200 classes of ImageNet-A or -R, in folder order
    (their synset lists ship with timm)."""
    if name not in ("imagenet-a", "imagenet-r"):
        return None
    data = pkgutil.get_data("timm.data", f"_info/imagenet_{name[-1]}_synsets.txt")
    wanted = data.decode().split()
    position = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
    return [position[s] for s in sorted(wanted)]


def folder_classes(folder: str, subset: list[int] | None, known: list[str] | None) -> list[str] | None:
    """The class list that maps a set's folders to the model's outputs (or to ``subset`` positions), so that
    a set missing some class folders is still scored against the right outputs; None: sorted folder names."""
    names = {d.name for d in Path(folder).iterdir() if d.is_dir()}
    if subset is not None:  # ImageNet-A/-R: positions in the sorted 200-synset list
        return sorted(ImageNetInfo().label_names()[i] for i in subset)
    if names and all(n.isdigit() for n in names) and known is not None:  # ImageNet-V2: folders 0..N-1
        return [str(i) for i in range(len(known))]
    if known is not None and names <= set(known):
        return list(known)
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    sets = {"val": args.data_dir, **{n: getattr(args, n.replace("-", "_")) for n in ROBUSTNESS_SETS}}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise SystemExit("nothing to validate: give --data-dir and/or a robustness set folder")
    loaded = load_for_eval(args.model, args.weights)
    model, transform = loaded.model, loaded.transform
    info = init_distributed()
    model.to(info.device)
    if args.img_size or args.crop_pct:
        overrides = {"crop_pct": args.crop_pct} if args.crop_pct else {}
        if args.img_size:
            overrides["input_size"] = (3, args.img_size, args.img_size)
        transform = create_transform(**resolve_data_config(overrides, model=model))
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    rows = []
    for name, folder in sets.items():
        subset = subset_indices(name)
        if not Path(folder).is_dir():
            raise SystemExit(f"{name}: folder not found: {folder}")
        dataset = ImageFolderDataset(folder, transform, classes=folder_classes(folder, subset, loaded.folder_classes))
        loader = DataLoader(dataset, args.batch_size, num_workers=args.workers, collate_fn=collate_skipping_corrupt)
        result = evaluate(model, loader, info, amp, class_subset=subset)
        rows.append((name, result))
        print(f"{name}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
              f"({result['images']} images, {result['skipped']} unreadable skipped)")
    print(f"\n{'set':<18} {'top-1':>7} {'top-5':>7} {'loss':>8} {'images':>8}")
    for name, r in rows:
        print(f"{name:<18} {r['top1']:>7.2f} {r['top5']:>7.2f} {r['loss']:>8.4f} {r['images']:>8}")
    print(f"model: {args.model or 'from checkpoint'}; preprocessing: {transform}")
    return 0
