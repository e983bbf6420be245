"""ImageNet-style folder trees (``ROOT/CLASS/*.jpg``) matched to class names, skipping and counting corrupt images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from .class_folders import class_folders, classes_from_folders, match_class_folders

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class ImageFolderDataset(Dataset):
    """Images under ``root/FOLDER/``, each folder holding one class (see :mod:`overlock.data.class_folders`).

    ``classes``: the class names the targets index (a model's or a training set's); each folder is matched
    to them by name, so a missing folder leaves the others' targets unchanged. A folder that matches no class
    is an error, or with ``skip_unknown`` is left out with a warning (counted in ``skipped_folders``). Without
    ``classes`` the classes are the folders' own, ordered by name (as numbers when all are numbers).

    A file that cannot be decoded is logged and yields ``None``, which ``collate_skipping_corrupt``
    drops from the batch and counts.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
        skip_unknown: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        folders = class_folders(root)
        if not folders:
            raise ValueError(f"{root} has no class folders (expected {root}/CLASS/image.jpg)")
        self.classes = list(classes) if classes is not None else classes_from_folders(folders, str(root))
        matched = match_class_folders(folders, self.classes, str(root), skip_unknown)
        self.skipped_folders = sorted(set(folders) - set(matched))
        if self.skipped_folders:
            images = sum(len(_images_in(root / f)) for f in self.skipped_folders)
            _logger.warning("%s: skipping %d class folder(s) (%d images) that match none of the %d classes: %s",
                            root, len(self.skipped_folders), images, len(self.classes),
                            ", ".join(repr(f) for f in self.skipped_folders))
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for folder, target in sorted(matched.items(), key=lambda item: item[1]):
            files = _images_in(root / folder)
            if not files:
                empty.append(folder)
            self.samples += [(p, target) for p in files]
        if empty:
            raise ValueError(f"{root}: empty class folders (no images): {', '.join(empty[:10])}")
        self.present_classes = len(matched)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, target = self.samples[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            _logger.warning("skipping corrupt image %s: %s", path, exc)
            return None
        return (self.transform(image) if self.transform else image), target


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def collate_skipping_corrupt(batch: list) -> tuple[Tensor, Tensor, int]:
    """Collate the readable samples; the third element counts the skipped ones."""
    good = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped
