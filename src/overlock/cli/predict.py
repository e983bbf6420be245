"""``overlock predict IMAGE...``: top-k classes of images, named by the model's classes (a run's class names,
ImageNet's for 1000-class models) or numbered when the model does not name them."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", help="timm model name (optional with a run checkpoint)", default=None)
    parser.add_argument("--weights", help="checkpoint file: official weights or an overlock run's best.pth")
    parser.add_argument("--top-k", type=int, default=5)


def run(args: argparse.Namespace) -> int:
    import torch

    from overlock.inference import load_image, load_model, prepare_for_inference
    from overlock.train.checkpoint import CheckpointError

    try:
        loaded = load_model(args.model, args.weights)
        model = prepare_for_inference(loaded.model)
        for path in args.images:
            x = load_image(path, loaded.transform)
            with torch.no_grad():
                probs = model(x[None]).softmax(-1)[0]
            top = probs.topk(min(args.top_k, len(probs)))
            print(path)
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f"  {p * 100:6.2f}%  {i:>4}  {loaded.label(i)}")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"overlock predict: {exc}") from exc
    return 0
