"""ImageNet-style folder trees (``ROOT/CLASS/*.jpg``) that skip and count corrupt images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, default_collate

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class ImageFolderDataset(Dataset):
    """Images under ``root/CLASS/``; class indices follow ``classes`` (default: sorted folder names).

    A file that cannot be decoded is logged and yields ``None``, which ``collate_skipping_corrupt``
    drops from the batch and counts.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, classes: Sequence[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        found = [d.name for d in root.iterdir() if d.is_dir()]
        # class folders named 0..N-1 (ImageNet-V2) are ordered as numbers, others by name (WordNet ids)
        found.sort(key=int if found and all(n.isdigit() for n in found) else None)
        if not found:
            raise ValueError(f"{root} has no class folders (expected {root}/CLASS/image.jpg)")
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"{root} has class folders not in the class list: {', '.join(unknown[:10])}")
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for name in found:
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                empty.append(name)
            self.samples += [(p, index[name]) for p in files]
        if empty:
            raise ValueError(f"{root}: empty class folders (no images): {', '.join(empty[:10])}")
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


def collate_skipping_corrupt(batch: list) -> tuple[Tensor, Tensor, int]:
    """Collate the readable samples; the third element counts the skipped ones."""
    good = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped
