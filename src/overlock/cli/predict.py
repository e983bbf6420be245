"""``overlock predict IMAGE...``: top-k classes of images, named by the model's classes (a run's class names,
ImageNet's for 1000-class models) or numbered when the model does not name them."""
from __future__ import annotations

import argparse

from .args import add_model_option, model_name, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    add_model_option(parser)
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors")
    parser.add_argument("--top-k", type=positive_int, default=5)


def run(args: argparse.Namespace) -> int:
    import torch

    from overlock.classification.inference import load_image, load_model, prepare_for_inference

    loaded = load_model(model_name(args), args.weights)
    model = prepare_for_inference(loaded.model)
    for path in args.images:
        x = load_image(path, loaded.transform)
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]
        top = probs.topk(min(args.top_k, len(probs)))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {p * 100:6.2f}%  {i:>4}  {loaded.label(i)}")
    return 0
