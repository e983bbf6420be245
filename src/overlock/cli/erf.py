"""``overlock erf``: effective receptive field of a model's pyramid level, as a heat map (PNG)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import timm
import torch

import overlock  # noqa: F401  (registers the models)
from overlock.visualize import effective_receptive_field, erf_high_contribution_area, level_features

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="timm model name, e.g. overlock_t")
    parser.add_argument("--weights", help="checkpoint file to load (official or overlock)")
    parser.add_argument("--images", nargs="+", help="image files (default: random noise images)")
    parser.add_argument("--num-random", type=int, default=8, help="noise images when --images is not given")
    parser.add_argument("--level", type=int, default=3, help="pyramid level 0-3 (strides 4-32)")
    parser.add_argument("--img-size", type=int, default=1024, help="input size (the paper uses 1024)")
    parser.add_argument("--out", default="erf.png", help="output PNG")


def load_model(name: str, weights: str | None) -> torch.nn.Module:
    """A timm model, with ``weights`` loaded through timm's pretrained route when given."""
    if name not in timm.list_models():
        raise SystemExit(f"unknown model {name!r}; OverLoCK models: {', '.join(timm.list_models('*overlock*'))}")
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)) if weights else {}
    return timm.create_model(name, **kwargs).eval()


def load_images(paths: list[str], size: int, model: torch.nn.Module) -> torch.Tensor:
    """Images resized to ``size`` and normalised with the model's mean and std."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    cfg = timm.data.resolve_data_config({}, model=model)
    batch = []
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"image not found: {path}")
        image = TF.resize(TF.pil_to_tensor(Image.open(path).convert("RGB")), [size, size], antialias=True)
        batch.append(TF.normalize(image.float() / 255, cfg["mean"], cfg["std"]))
    return torch.stack(batch)


def save_heatmap(values: torch.Tensor, path: str, title: str) -> None:
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
    model = load_model(args.model, args.weights)
    if args.images:
        images = load_images(args.images, args.img_size, model)
    else:
        _logger.info("no --images given: using %d noise images", args.num_random)
        images = torch.randn(args.num_random, 3, args.img_size, args.img_size)
    erf = effective_receptive_field(level_features(model, args.level), images)
    shown = torch.log1p(erf / erf.max() * 100)
    save_heatmap(shown / shown.max(), args.out, f"{args.model} ERF, level {args.level}")
    ratios = {t: erf_high_contribution_area(erf, t) for t in (0.2, 0.3, 0.5, 0.99)}
    print("high-contribution area ratio: " + ", ".join(f"t={t}: {r:.1%}" for t, r in ratios.items()))
    print(f"wrote {args.out}")
    return 0
