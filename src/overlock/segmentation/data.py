"""Semantic-segmentation data: image/mask folder pairs, ADE20K's layout, and the official training pipeline.

Layouts (``ROOT`` is what ``--data-dir`` names):

- ``ade20k``: ADEChallengeData2016 as released, ``ROOT/images/{training,validation}/*.jpg`` and
  ``ROOT/annotations/{training,validation}/*.png``; masks hold 0 for unlabelled and 1-150 for the classes, reduced
  as mmsegmentation reduces them (0 -> 255, ignored; c -> c - 1).
- ``folder``: any images with index masks, ``ROOT/images/SPLIT/...`` and ``ROOT/masks/SPLIT/...`` (or
  ``ROOT/annotations/SPLIT/...``) for SPLIT ``train`` and ``val``, the mask of ``images/SPLIT/a/b.jpg`` being
  ``masks/SPLIT/a/b.png``; ``ROOT/classes.txt`` names the classes, one a line, in index order; mask values are
  class indices, 255 is unlabelled (``reduce_zero_label`` reads them as ADE20K's are read).

Bad data: an empty or missing folder stops with a one-line error. An image without a mask is left out at the
start and counted (a warning names the first). A sample whose files cannot be read, whose mask has another size
than its image, or whose mask holds labels outside the classes is skipped when it is loaded: a warning names the
file and the reason, and the loaders count the skipped samples (``collate_segmentation``). In training the next
usable sample takes its place, so that batches keep their size (BatchNorm after the 1x1 pyramid pooling needs
two images or more).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ..data.folder import IMAGE_EXTENSIONS

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
LAYOUTS = ("ade20k", "folder")
SPLITS = {"ade20k": {"train": "training", "val": "validation"}, "folder": {"train": "train", "val": "val"}}
MASK_FOLDERS = ("masks", "annotations")

# ADE20K (SceneParsing, 150 classes): the first name of each class in objectInfo150, in index order
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)


class SegmentationDataError(ValueError):
    """A segmentation data set that cannot be used: missing or empty folders, no image/mask pairs, no classes."""


@dataclass(frozen=True)
class Skipped:
    """A sample left out when loading it, with the reason (counted by ``collate_segmentation``)."""

    path: str
    reason: str


# ---------------------------------------------------------------------- finding the pairs
def read_classes(root: Path, layout: str) -> list[str]:
    """The class names: ``ROOT/classes.txt`` when present, else ADE20K's for its layout."""
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise SegmentationDataError(f"{path} names no classes")
        if len(names) > IGNORE_INDEX:
            raise SegmentationDataError(f"{path} names {len(names)} classes; at most {IGNORE_INDEX} fit 8-bit masks")
        return names
    if layout == "ade20k":
        return list(ADE20K_CLASSES)
    raise SegmentationDataError(f"no class list: write the class names, one a line in index order, to {path}")


def split_folders(root: Path, layout: str, split: str) -> tuple[Path, Path]:
    """(image folder, mask folder) of ``split`` ('train' or 'val') in ``root``."""
    if layout not in LAYOUTS:
        raise SegmentationDataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise SegmentationDataError(f"data folder not found: {root}")
    name = SPLITS[layout][split]
    images = root / "images" / name
    masks_options = [root / m / name for m in (("annotations",) if layout == "ade20k" else MASK_FOLDERS)]
    masks = next((m for m in masks_options if m.is_dir()), None)
    if not images.is_dir():
        raise SegmentationDataError(f"image folder not found: {images}")
    if masks is None:
        raise SegmentationDataError(f"mask folder not found: {' or '.join(map(str, masks_options))}")
    return images, masks


def find_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: the mask of ``images/a/b.jpg`` is ``masks/a/b.png``. Images without a mask are left
    out and counted in a warning; no image, or no pair, is an error."""
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise SegmentationDataError(f"{images} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    pairs, unmatched = [], []
    for image in files:
        mask = (masks / image.relative_to(images)).with_suffix(".png")
        (pairs.append((image, mask)) if mask.is_file() else unmatched.append(image))
    if not pairs:
        raise SegmentationDataError(f"none of the {len(files)} images in {images} has a mask in {masks} "
                                    f"(expected e.g. {(masks / files[0].relative_to(images)).with_suffix('.png')})")
    if unmatched:
        _logger.warning("%s: %d of %d images have no mask in %s and are left out (first: %s)", images,
                        len(unmatched), len(files), masks, unmatched[0].name)
    return pairs


# ---------------------------------------------------------------------- reading a sample
def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """(H, W) class indices of an index image (modes L, P or I;16)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I;16", "I"):
            raise ValueError(f"mode {img.mode}, not an index image (expected one value a pixel: L, P or I;16)")
        return np.asarray(img).astype(np.int64)


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K's reading of a mask: 0 (unlabelled) becomes the ignore index, every other class c becomes c - 1."""
    return np.where(mask == 0, IGNORE_INDEX, mask - 1)


def check_labels(mask: np.ndarray, num_classes: int) -> Optional[str]:
    """Why ``mask`` cannot be used with ``num_classes`` classes (labels outside them, other than the ignore
    index), or None."""
    bad = np.unique(mask[((mask < 0) | (mask >= num_classes)) & (mask != IGNORE_INDEX)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        return f"labels outside the {num_classes} classes (0-{num_classes - 1}, {IGNORE_INDEX} unlabelled): {shown}"
    return None


class SegmentationDataset(Dataset):
    """Image/mask pairs of one split (see the module's layouts).

    Items are ``transform(image, mask)`` of an (H, W, 3) uint8 RGB image and an (H, W) int64 mask (the pair itself
    without a transform), or a ``Skipped`` for a sample that cannot be used. With ``substitute_skipped`` (training)
    the next usable sample takes a skipped one's place and items are ``(*transform(image, mask), skipped)``, where
    ``skipped`` counts the samples passed over.
    """

    def __init__(self, root: str | Path, split: str = "train", layout: str = "folder",
                 transform: Optional[Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]] = None,
                 classes: Optional[Sequence[str]] = None, reduce_zero_label: Optional[bool] = None,
                 substitute_skipped: bool = False):
        root = Path(root)
        images, masks = split_folders(root, layout, split)
        self.classes = list(classes) if classes is not None else read_classes(root, layout)
        self.reduce_zero_label = layout == "ade20k" if reduce_zero_label is None else reduce_zero_label
        self.samples = find_pairs(images, masks)
        self.transform = transform
        self.substitute_skipped = substitute_skipped
        self.root, self.split, self.layout = root, split, layout

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray] | Skipped:
        """The image and its (reduced) mask, or why the sample is skipped."""
        image_path, mask_path = self.samples[index]
        try:
            image = read_image(image_path)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            return self._skip(image_path, f"unreadable image ({exc})")
        try:
            mask = read_mask(mask_path)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            return self._skip(mask_path, f"unreadable mask ({exc})")
        if mask.shape != image.shape[:2]:
            return self._skip(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                                         f"{image.shape[1]}x{image.shape[0]}")
        if self.reduce_zero_label:
            mask = reduce_zero_label(mask)
        problem = check_labels(mask, self.num_classes)
        if problem:
            return self._skip(mask_path, problem)
        return image, mask

    @staticmethod
    def _skip(path: Path, reason: str) -> Skipped:
        _logger.warning("skipping %s: %s", path, reason)
        return Skipped(str(path), reason)

    def __getitem__(self, index: int):
        sample = self.load(index)
        skipped = 0
        while self.substitute_skipped and isinstance(sample, Skipped) and skipped < len(self) - 1:
            skipped += 1
            sample = self.load((index + skipped) % len(self))
        if isinstance(sample, Skipped):
            return sample
        pair = self.transform(*sample) if self.transform is not None else sample
        return (*pair, skipped) if self.substitute_skipped else pair


def collate_segmentation(batch: list) -> tuple[Tensor, Tensor, int]:
    """Stack the usable samples of a batch (images and masks of one size); the third element counts the skipped
    ones (``Skipped`` items, and the counts of items that replaced skipped samples)."""
    good = [sample for sample in batch if not isinstance(sample, Skipped)]
    skipped = len(batch) - len(good) + sum(int(sample[2]) for sample in good if len(sample) == 3)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([s[0] for s in good]), torch.stack([s[1] for s in good]), skipped


# ---------------------------------------------------------------------- the training pipeline
def to_tensor_normalized(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 RGB to (3, H, W) float32 normalised with the ImageNet mean and std in 0-255 units."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (pixels - torch.tensor(MEAN_255).reshape(3, 1, 1)) / torch.tensor(STD_255).reshape(3, 1, 1)


def fit_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """(height, width) resized keeping the aspect ratio to fit ``scale`` (long side, short side), rounded to the
    nearest pixel (mmcv's ``rescale_size``)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def multiple_size(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
    """Each side rounded up to a multiple of ``divisor``."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def prepare_test_image(image: np.ndarray, scale: Sequence[float] = (2048, 512), divisor: int = 32) -> Tensor:
    """The official test pipeline: (H, W, 3) uint8 RGB fitted into ``scale`` (bilinear), each side then up to a
    multiple of ``divisor`` (bicubic), normalised; returns (3, H', W') float32."""
    fitted = resize_image(image, fit_size(*image.shape[:2], scale))
    return to_tensor_normalized(resize_image(fitted, multiple_size(*fitted.shape[:2], divisor), "bicubic"))


def resize_image(image: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 resized without antialiasing, as OpenCV resizes (``mode`` 'bilinear' or 'bicubic'), and
    rounded back to uint8 as OpenCV does for 8-bit images."""
    if image.shape[:2] == tuple(size):
        return image
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, size=tuple(size), mode=mode, align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (OpenCV's INTER_NEAREST: source index floor(i * in / out))."""
    if mask.shape == size:
        return mask
    rows = (np.arange(size[0]) * mask.shape[0] // size[0]).clip(max=mask.shape[0] - 1)
    cols = (np.arange(size[1]) * mask.shape[1] // size[1]).clip(max=mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB to 8-bit HSV with OpenCV's conventions: H in [0, 180) (degrees / 2), S and V in [0, 255]."""
    rgb = image.astype(np.float32)
    high, low = rgb.max(-1), rgb.min(-1)
    delta = high - low
    safe = np.where(delta == 0, 1, delta)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(high == r, 60 * (g - b) / safe, np.where(high == g, 120 + 60 * (b - r) / safe,
                                                             240 + 60 * (r - g) / safe))
    hue = np.where(delta == 0, 0, hue) % 360
    sat = np.where(high == 0, 0, delta * 255 / np.where(high == 0, 1, high))
    hsv = np.stack([np.round(hue / 2) % 180, np.round(sat), high], axis=-1)
    return hsv.astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv``, rounded to uint8."""
    h = hsv[..., 0].astype(np.float32) * 2 / 60
    s = hsv[..., 1].astype(np.float32) / 255
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, dtype=np.float32)
    for k, (r, g, b) in enumerate(choices):
        chosen = sector == k
        out[chosen] = np.stack([r, g, b], axis=-1)[chosen]
    return np.round(out).clip(0, 255).astype(np.uint8)


def _scale_values(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta`` clipped to [0, 255] and truncated to uint8, as mmsegmentation's ``convert``."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, brightness: int = 32, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5), hue: int = 18) -> np.ndarray:
    """mmsegmentation's PhotoMetricDistortion, each step with probability 1/2: brightness shift, contrast (before
    or after the colour steps, at random), saturation scale, hue shift; numpy's global generator."""
    rand = np.random
    if rand.randint(2):
        image = _scale_values(image, beta=rand.uniform(-brightness, brightness))
    contrast_first = rand.randint(2) == 1
    if contrast_first and rand.randint(2):
        image = _scale_values(image, alpha=rand.uniform(*contrast))
    if rand.randint(2):
        hsv = rgb_to_hsv(image)
        hsv[..., 1] = _scale_values(hsv[..., 1], alpha=rand.uniform(*saturation))
        image = hsv_to_rgb(hsv)
    if rand.randint(2):
        hsv = rgb_to_hsv(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rand.randint(-hue, hue)) % 180
        image = hsv_to_rgb(hsv)
    if not contrast_first and rand.randint(2):
        image = _scale_values(image, alpha=rand.uniform(*contrast))
    return image


@dataclass
class TrainPipeline:
    """The official ADE20K training pipeline (mmsegmentation 0.30), on numpy's and Python's global generators
    (seeded per sample by ``SeededDataset``):

    resize keeping the aspect ratio to fit ``scale`` x a ratio drawn from ``ratio_range`` (bilinear image,
    nearest mask); a random ``crop_size`` crop, drawn again up to 10 times while one class covers
    ``cat_max_ratio`` or more of its labelled pixels; horizontal flip with probability ``flip_prob``; the
    photometric distortion; normalisation; padding to ``crop_size`` (image 0 after normalisation, mask 255).
    """

    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        ratio = np.random.random_sample() * (self.ratio_range[1] - self.ratio_range[0]) + self.ratio_range[0]
        size = fit_size(*image.shape[:2], (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image, mask = resize_image(image, size), resize_mask(mask, size)
        top, left = self._crop_origin(mask)
        crop_h, crop_w = self.crop_size
        image, mask = image[top:top + crop_h, left:left + crop_w], mask[top:top + crop_h, left:left + crop_w]
        if np.random.rand() < self.flip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image))
        return self._pad(to_tensor_normalized(image), torch.from_numpy(np.ascontiguousarray(mask)))

    def _crop_origin(self, mask: np.ndarray) -> tuple[int, int]:
        def draw() -> tuple[int, int]:
            return (np.random.randint(0, max(mask.shape[0] - self.crop_size[0], 0) + 1),
                    np.random.randint(0, max(mask.shape[1] - self.crop_size[1], 0) + 1))

        origin = draw()
        if self.cat_max_ratio >= 1:
            return origin
        for _ in range(10):
            top, left = origin
            crop = mask[top:top + self.crop_size[0], left:left + self.crop_size[1]]
            _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            origin = draw()
        return origin

    def _pad(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        pad_h, pad_w = self.crop_size[0] - image.shape[1], self.crop_size[1] - image.shape[2]
        if pad_h > 0 or pad_w > 0:
            image = torch.nn.functional.pad(image, [0, max(pad_w, 0), 0, max(pad_h, 0)], value=0.0)
            mask = torch.nn.functional.pad(mask, [0, max(pad_w, 0), 0, max(pad_h, 0)], value=IGNORE_INDEX)
        return image, mask.long()

