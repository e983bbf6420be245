"""``overlock erf``: effective receptive field of a model's pyramid level, as a heat map (PNG)."""
from __future__ import annotations

import argparse
import logging

from .args import add_model_option, model_name, positive_int

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional=True)
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors")
    parser.add_argument("--images", nargs="+", help="image files (default: random noise images)")
    parser.add_argument("--num-random", type=positive_int, default=8, help="noise images when --images is not given")
    parser.add_argument("--level", type=int, choices=range(4), default=3, help="pyramid level 0-3 (strides 4-32)")
    parser.add_argument("--img-size", type=positive_int, default=1024, help="input size (the paper uses 1024)")
    parser.add_argument("--out", default="erf.png", help="output PNG")


def save_heatmap(values, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(values.numpy(), cmap="RdYlGn")
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    from overlock.classification.inference import load_image, load_model
    from overlock.visualize import effective_receptive_field, erf_high_contribution_area, level_features

    # whole images at the chosen size (crop 1.0): the ERF is measured at the centre of the input
    loaded = load_model(model_name(args), args.weights, img_size=args.img_size, crop_pct=1.0)
    if args.images:
        images = torch.stack([load_image(path, loaded.transform) for path in args.images])
    else:
        _logger.info("no --images given: using %d noise images", args.num_random)
        images = torch.randn(args.num_random, loaded.in_chans, args.img_size, args.img_size)
    erf = effective_receptive_field(level_features(loaded.model, args.level), images)
    shown = torch.log1p(erf / erf.max() * 100)
    save_heatmap(shown / shown.max(), args.out, f"{loaded.name} ERF, level {args.level}")
    ratios = {t: erf_high_contribution_area(erf, t) for t in (0.2, 0.3, 0.5, 0.99)}
    print("high-contribution area ratio: " + ", ".join(f"t={t}: {r:.1%}" for t, r in ratios.items()))
    print(f"wrote {args.out}")
    return 0
