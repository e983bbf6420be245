"""A generated segmentation data set with exact masks: discs, squares and triangles on textured backgrounds.

Each image holds one or two shapes of random size and position that do not overlap, on a greyish background with
noise; each class has its own hue (reddish discs, greenish squares, bluish triangles) at random brightness and
saturation. A model scores well only if its masks follow the outlines at full resolution: the decode head's
stride-4 logits, the pyramid's upsampling and the loss must all line up.
Masks: 0 background, 1 disc, 2 square, 3 triangle, in index PNGs. Written in the ``folder`` layout of
:mod:`overlock.segmentation.data` (``images/{train,val}``, ``masks/{train,val}``, ``classes.txt``), and as COCO
instances of the same images (``annotations/instances_{train,val}.json``: categories 1 disc, 2 square, 3 triangle;
squares and triangles as polygons of their outlines, discs as RLE of their exact masks; tight boxes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

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


def make_instances(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray, float]]]:
    """One (size, size, 3) uint8 image and its shapes (class, centre, radius): one or two that do not overlap, on
    a greyish noisy background."""
    image = rng.uniform(60, 200) + rng.uniform(-15, 15, 3) + rng.normal(0, 12, (size, size, 3))
    shapes = []
    for centre, radius in _place(int(rng.integers(1, 3)), size, rng):
        kind = int(rng.integers(1, 4))
        inside = _shape_mask(kind, size, centre, radius)
        image[inside] = _class_colour(kind, rng) + rng.normal(0, 10, (int(inside.sum()), 3))
        shapes.append((kind, centre, radius))
    return np.clip(image, 0, 255).astype(np.uint8), shapes


def make_sample(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 class mask (see ``make_instances``)."""
    image, shapes = make_instances(size, rng)
    mask = np.zeros((size, size), dtype=np.uint8)
    for kind, centre, radius in shapes:
        mask[_shape_mask(kind, size, centre, radius)] = kind
    return image, mask


def _outline(kind: int, centre: np.ndarray, radius: float) -> list[float] | None:
    """The polygon (x, y, x, y, ...) of a square or triangle in pixel coordinates; None for a disc."""
    cy, cx = centre
    if kind == 2:
        h = radius * 0.85
        return [cx - h, cy - h, cx + h, cy - h, cx + h, cy + h, cx - h, cy + h]
    if kind == 3:
        top, base, half = cy - radius, cy + radius * 0.8, radius * 1.1
        return [cx, top, cx + half, base, cx - half, base]
    return None


def instance_annotation(kind: int, centre: np.ndarray, radius: float, size: int) -> dict:
    """A COCO annotation of one shape (without ids): its tight box and area from the exact mask, the outline as a
    polygon (squares, triangles) or the mask as compressed RLE (discs)."""
    inside = _shape_mask(kind, size, centre, radius)
    rows, cols = np.nonzero(inside)
    x1, y1 = int(cols.min()), int(rows.min())
    bbox = [x1, y1, int(cols.max()) + 1 - x1, int(rows.max()) + 1 - y1]
    outline = _outline(kind, centre, radius)
    if outline is None:
        rle = coco_mask.encode(np.asfortranarray(inside.astype(np.uint8)))
        segmentation: object = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [[round(float(v), 2) for v in outline]]
    return {"category_id": kind, "bbox": bbox, "area": int(inside.sum()), "iscrowd": 0, "segmentation": segmentation}


def write_shapes_dataset(root: str | Path, train: int = 256, val: int = 64, size: int = 64,
                         seed: int = 0) -> dict[str, int]:
    """Write ``train`` and ``val`` samples of ``size`` px under ``root``; returns the counts written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": k, "name": name} for k, name in enumerate(SHAPE_CLASSES) if k]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = make_instances(size, rng)
            mask = np.zeros((size, size), dtype=np.uint8)
            for kind, centre, radius in shapes:
                mask[_shape_mask(kind, size, centre, radius)] = kind
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1,
                                        **instance_annotation(kind, centre, radius, size)))
            name = f"{i:05d}.png"
            Image.fromarray(image).save(root / "images" / split / name)
            Image.fromarray(mask, mode="L").save(root / "masks" / split / name)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (root / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    return {"train": train, "val": val}
