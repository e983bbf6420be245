"""A generated segmentation data set with exact masks: discs, squares and triangles on textured backgrounds.

Each image holds one or two shapes of random size and position that do not overlap, on a greyish background with
noise; each class has its own hue (reddish discs, greenish squares, bluish triangles) at random brightness and
saturation. A model scores well only if its masks follow the outlines at full resolution: the decode head's
stride-4 logits, the pyramid's upsampling and the loss must all line up.
Masks: 0 background, 1 disc, 2 square, 3 triangle, in index PNGs. Written in the ``folder`` layout of
:mod:`overlock.segmentation.data` (``images/{train,val}``, ``masks/{train,val}``, ``classes.txt``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHAPE_CLASSES = ("background", "disc", "square", "triangle")


def _shape_mask(kind: int, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of one shape of class ``kind`` (1 disc, 2 square, 3 triangle) on a ``size`` x ``size`` canvas."""
    cy, cx = centre
    yy, xx = np.mgrid[:size, :size] + 0.5
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    if kind == 2:
        half = radius * 0.85
        return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    top, base = cy - radius, cy + radius * 0.8  # pointing up: above the base, below both slanted sides
    return (yy <= base) & (yy - top >= np.abs(xx - cx) / (radius * 1.1) * (base - top))


def _place(count: int, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Centres and radii of ``count`` shapes that do not overlap (fewer when there is no room)."""
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(20 * count):
        if len(placed) == count:
            break
        radius = rng.uniform(0.18, 0.3) * size
        centre = rng.uniform(radius, size - radius, 2)
        if all(np.hypot(*(centre - c)) > radius + r + 2 for c, r in placed):
            placed.append((centre, radius))
    return placed


def _class_colour(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A colour of the class's own hue: reddish discs, greenish squares, bluish triangles, each drawn at random
    brightness and saturation."""
    colour = rng.uniform(0, 110, 3)
    colour[kind - 1] = rng.uniform(150, 255)
    return colour


def make_sample(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 mask: one or two shapes that do not overlap, on a
    greyish noisy background."""
    image = rng.uniform(60, 200) + rng.uniform(-15, 15, 3) + rng.normal(0, 12, (size, size, 3))
    mask = np.zeros((size, size), dtype=np.uint8)
    for centre, radius in _place(int(rng.integers(1, 3)), size, rng):
        kind = int(rng.integers(1, 4))
        inside = _shape_mask(kind, size, centre, radius)
        image[inside] = _class_colour(kind, rng) + rng.normal(0, 10, (int(inside.sum()), 3))
        mask[inside] = kind
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_shapes_dataset(root: str | Path, train: int = 256, val: int = 64, size: int = 64,
                         seed: int = 0) -> dict[str, int]:
    """Write ``train`` and ``val`` samples of ``size`` px under ``root``; returns the counts written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = make_sample(size, rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:05d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:05d}.png")
    (root / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    return {"train": train, "val": val}
