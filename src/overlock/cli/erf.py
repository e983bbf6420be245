"""``overlock erf``: effective receptive fields of one or more models, side by side, as RepLKNet measures them.

Every model's ERF of one stage is averaged over the same images (each resized to ``--img-size`` squared with
bicubic interpolation, as RepLKNet's script does), drawn as a heat map of ``log10(1 + ERF)`` scaled to [0, 1]
(one picture, one map per model) and summarised by its high-contribution area ratios (one table, printed as
Markdown and written as Markdown or CSV with ``--table``). See ``overlock.visualize`` and docs/analysis.md.
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .args import MODEL_HELP, positive_int

if TYPE_CHECKING:
    from torch import Tensor

_logger = logging.getLogger(__name__)

STAGES = (1, 2, 3, 4)


class _ModelAndWeights(argparse.Action):
    """``--model NAME`` starts a model entry; ``--weights FILE`` belongs to the ``--model`` before it (or starts an
    entry of its own: a run checkpoint names its model)."""

    def __call__(self, parser, namespace, value, option_string=None):
        entries = [list(entry) for entry in getattr(namespace, self.dest) or []]
        if option_string == "--model":
            entries.append([value, None])
        elif entries and entries[-1][1] is None:
            entries[-1][1] = value
        else:
            entries.append([None, value])
        setattr(namespace, self.dest, entries)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="entries", action=_ModelAndWeights, metavar="MODEL",
                        help=f"{MODEL_HELP}; repeat for several models, drawn side by side")
    parser.add_argument("--weights", dest="entries", action=_ModelAndWeights, metavar="WEIGHTS",
                        help="checkpoint file of the --model before it: official weights, any timm-loadable file, or "
                             "an overlock run's best.pth or best.safetensors")
    parser.add_argument("positional_model", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files or folders (searched recursively, in sorted order: the first --num-images "
                             "are used; default: noise images)")
    parser.add_argument("--num-images", type=positive_int, default=50,
                        help="images to average over (RepLKNet: the first 50 ImageNet validation images)")
    parser.add_argument("--num-random", type=positive_int, default=8, help="noise images when --images is not given")
    parser.add_argument("--stage", type=int, choices=STAGES, default=4,
                        help="stage whose centre output is measured, 1-4 (strides 4-32; default 4, the last)")
    parser.add_argument("--img-size", type=positive_int, default=1024,
                        help="side the images are resized to (RepLKNet and the paper: 1024)")
    parser.add_argument("--out", default="erf.png", help="output PNG: the heat maps side by side")
    parser.add_argument("--table", help="also write the table of area ratios here (CSV for a .csv name, else Markdown)")
    parser.add_argument("--save-matrices", metavar="DIR",
                        help="also write each model's mean contribution map (before the log scale) as DIR/LABEL.npy, "
                             "the matrix RepLKNet's visualize_erf.py saves and analyze_erf.py reads")


@dataclass
class ErfRow:
    """One model's measurement: its label, the stage, the images averaged, and the area ratio per threshold."""

    label: str
    stage: int
    images: int
    img_size: int
    ratios: dict[float, float | None]


def model_entries(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    """The (model name, weights file) pairs to measure, in order; the earlier positional name is the first model."""
    entries = [list(entry) for entry in args.entries or []]
    if args.positional_model:
        if entries and entries[0][0] is None:
            entries[0][0] = args.positional_model
        else:
            entries.insert(0, [args.positional_model, None])
    if not entries:
        raise ValueError("name a model with --model NAME (or pass a run checkpoint with --weights)")
    return [(name, weights) for name, weights in entries]


def image_paths(paths: list[str]) -> list[Path]:
    """Image files from files and folders (folders searched recursively), each folder's in sorted order."""
    from overlock.data.folder import IMAGE_EXTENSIONS

    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                raise ValueError(f"{given}: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            found += files
        elif given.is_file():
            found.append(given)
        else:
            raise FileNotFoundError(f"image or folder not found: {given}")
    return found


def replknet_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """RepLKNet's ERF input: the image resized to ``size`` x ``size`` (bicubic, aspect ratio not kept, no crop),
    as a tensor normalised with the model's ``mean`` and ``std`` (greyscale for a one-channel model)."""
    from torchvision import transforms

    steps = [transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC)]
    if len(mean) == 1:
        steps.append(transforms.Grayscale())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def measure(name: str | None, weights: str | None, args: argparse.Namespace,
            paths: list[Path]) -> tuple[Tensor, ErfRow]:
    """One model's mean contribution map at ``args.stage`` and its table row."""
    import torch

    from overlock.classification.inference import load_image, load_model
    from overlock.visualize import effective_receptive_field, erf_area_ratios, stage_features

    loaded = load_model(name, weights)
    loaded.model.requires_grad_(False)  # only the input's gradient is needed: no activations kept for weight gradients
    label = loaded.name if weights is None else f"{loaded.name} ({Path(weights).name})"
    try:
        features = stage_features(loaded.model, args.stage)
    except ValueError as exc:
        raise ValueError(f"{loaded.name}: {exc}") from None
    images: Iterator
    if paths:
        transform = replknet_transform(args.img_size, loaded.mean, loaded.std)
        images = (load_image(path, transform) for path in paths)
        wanted = args.num_images
    else:
        _logger.info("no --images given: using %d noise images", args.num_random)
        generator = torch.Generator().manual_seed(0)  # the same noise for every model
        images = (torch.randn(loaded.in_chans, args.img_size, args.img_size, generator=generator)
                  for _ in range(args.num_random))
        wanted = args.num_random
    erf, count = effective_receptive_field(features, images, wanted)
    if count < wanted:
        _logger.warning("%s: averaged over %d images, fewer than the %d asked for", label, count, wanted)
    return erf, ErfRow(label, args.stage, count, args.img_size, erf_area_ratios(erf))


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:.1f}%"


def markdown_table(rows: list[ErfRow]) -> str:
    """The area ratios as a Markdown table, in percent of the input's area (RepLKNet's Table 4 form)."""
    thresholds = list(rows[0].ratios)
    lines = ["| model | stage | images | input | " + " | ".join(f"t = {t:.0%}" for t in thresholds) + " |",
             "|---|---|---|---|" + "---|" * len(thresholds)]
    for row in rows:
        cells = [row.label, str(row.stage), str(row.images), f"{row.img_size}x{row.img_size}"]
        lines.append("| " + " | ".join(cells + [_percent(row.ratios[t]) for t in thresholds]) + " |")
    return "\n".join(lines)


def write_table(rows: list[ErfRow], path: str) -> None:
    """The table as CSV with the ratios as fractions (a ``.csv`` path), else as Markdown."""
    if path.endswith(".csv"):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            thresholds = list(rows[0].ratios)
            writer.writerow(["model", "stage", "images", "img_size"] + [f"ratio_t{t}" for t in thresholds])
            for row in rows:
                writer.writerow([row.label, row.stage, row.images, row.img_size]
                                + ["" if row.ratios[t] is None else f"{row.ratios[t]:.6f}" for t in thresholds])
    else:
        Path(path).write_text(markdown_table(rows) + "\n")


def save_matrices(maps: list[Tensor], rows: list[ErfRow], folder: str) -> None:
    """Each mean contribution map as ``folder/LABEL.npy`` (float64), LABEL being the table's model label with
    anything but letters, digits, '.', '-' and '_' turned into '_'."""
    import re

    import numpy as np

    Path(folder).mkdir(parents=True, exist_ok=True)
    for erf, row in zip(maps, rows):
        np.save(Path(folder) / (re.sub(r"[^\w.-]+", "_", row.label).strip("_") + ".npy"), erf.double().numpy())


def save_heatmaps(maps: list[Tensor], rows: list[ErfRow], path: str) -> None:
    """One heat map of ``log10(1 + ERF)`` scaled to [0, 1] per model, side by side, in the colours of RepLKNet's
    figures (the upper, yellow-to-green half of RdYlGn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    from overlock.visualize import erf_log_scaled

    cmap = ListedColormap(plt.get_cmap("RdYlGn")(np.linspace(0.5, 1.0, 256)))
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4.6), squeeze=False)
    for ax, erf, row in zip(axes[0], maps, rows):
        image = ax.imshow(erf_log_scaled(erf).numpy(), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"{row.label}\nstage {row.stage}, {row.images} images, {row.img_size}px", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ratios = [f"t = {t:.0%}: {_percent(r)}" for t, r in row.ratios.items()]
        ax.set_xlabel("area ratio at " + ", ".join(ratios[:2]) + ",\n" + ", ".join(ratios[2:]), fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), orientation="horizontal", location="top", fraction=0.04, pad=0.12)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    entries = model_entries(args)
    paths = image_paths(args.images) if args.images else []
    maps, rows = [], []
    for name, weights in entries:
        erf, row = measure(name, weights, args, paths)
        maps.append(erf)
        rows.append(row)
    save_heatmaps(maps, rows, args.out)
    if args.save_matrices:
        save_matrices(maps, rows, args.save_matrices)
    table = markdown_table(rows)
    if args.table:
        write_table(rows, args.table)
    print("high-contribution area ratios (share of the input's area):")
    print(table)
    print(f"wrote {args.out}" + (f" and {args.table}" if args.table else ""))
    return 0
