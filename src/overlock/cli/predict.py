"""``overlock predict IMAGE...``: top-k classes of images, with ImageNet class names for 1000-class models."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", help="timm model name (optional with a run checkpoint)", default=None)
    parser.add_argument("--weights", help="checkpoint file: official weights or an overlock run's best.pth")
    parser.add_argument("--top-k", type=int, default=5)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from overlock.train.models import load_for_eval

    loaded = load_for_eval(args.model, args.weights)
    for path in args.images:
        if not Path(path).is_file():
            raise SystemExit(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                x = loaded.transform(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise SystemExit(f"cannot read image {path}: {exc}") from exc
        with torch.no_grad():
            probs = loaded.model(x[None]).softmax(-1)[0]
        top = probs.topk(min(args.top_k, len(probs)))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            label = loaded.classes[i] if loaded.classes else str(i)
            print(f"  {p * 100:6.2f}%  {i:>4}  {label}")
    return 0
