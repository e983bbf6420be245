"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (or any folder of the IDX files)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .class_folders import folder_name

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> Tensor:
    """An IDX file (gzipped or not) of unsigned bytes as a uint8 tensor of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    expected = 1
    for s in shape:
        expected *= s
    if len(body) != expected:
        raise ValueError(f"{path} is truncated: {len(body)} bytes for shape {shape}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST images as (1, 28, 28) uint8 tensors passed through ``transform``, with labels."""

    def __init__(self, split: str = "train", root: str | Path | None = None, transform: Callable | None = None):
        if split not in _FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root) if root else FASHION_MNIST_DIR
        paths = [root / name for name in _FILES[split]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST not found ({', '.join(missing)}): install it with "
                "`apt-get install dataset-fashion-mnist` (as root, or with sudo) or point --data-dir at a folder of "
                "its IDX files"
            )
        self.images = read_idx(paths[0]).unsqueeze(1)
        self.targets = read_idx(paths[1]).long()
        if len(self.images) != len(self.targets):
            raise ValueError(f"{root}: {len(self.images)} images but {len(self.targets)} labels")
        self.transform = transform
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


FASHION_MNIST_SPLIT_FOLDERS = {"train": "train", "test": "val"}  # the layout `overlock train --data-dir` reads


def write_fashion_mnist_folders(
    out: str | Path, root: str | Path | None = None, train_limit: int | None = None, test_limit: int | None = None
) -> dict[str, int]:
    """Write Fashion-MNIST as PNG image-folder trees, ``out/train/FOLDER/`` (training split) and
    ``out/val/FOLDER/`` (test split), each class in its documented folder (``T-shirt/top`` in ``T-shirt%2Ftop``).

    ``train_limit``/``test_limit``: write only the first N images of that split. Returns the images written per
    split.
    """
    out = Path(out)
    written = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        data = FashionMNIST(split, root)
        folders = [out / FASHION_MNIST_SPLIT_FOLDERS[split] / folder_name(c, data.classes) for c in data.classes]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        count = len(data) if limit is None else min(limit, len(data))
        for i in range(count):
            Image.fromarray(data.images[i, 0].numpy()).save(folders[int(data.targets[i])] / f"{i:05d}.png")
        written[split] = count
    return written


FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class FashionMNISTTransform:
    """uint8 (1, 28, 28) or a PIL image -> normalised float (1, S, S): scaled to 7/8 of S and padded to S; in training
    also shifted by up to S/16 pixels and flipped left-right at random (torch RNG)."""

    def __init__(self, img_size: int = 32, train: bool = False):
        if img_size < 32:
            raise ValueError(f"img_size must be at least 32 for OverLoCK, got {img_size}")
        self.img_size, self.train = img_size, train
        self.inner = img_size * 7 // 8
        self.shift = img_size // 16

    def __call__(self, image: Tensor | Image.Image) -> Tensor:
        if isinstance(image, Image.Image):  # any picture: greyscale, 28 x 28, as the dataset's own
            grey = image.convert("L").resize((28, 28), Image.BILINEAR)
            image = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).reshape(1, 28, 28)
        x = image.float().div(255)
        if self.inner != x.shape[-1]:
            x = torch.nn.functional.interpolate(x[None], size=(self.inner, self.inner), mode="bilinear")[0]
        before = (self.img_size - self.inner) // 2
        after = self.img_size - self.inner - before
        if self.train:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            dy, dx = max(min(dy, before), -after), max(min(dx, before), -after)
            x = torch.nn.functional.pad(x, (before + dx, after - dx, before + dy, after - dy))
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        else:
            x = torch.nn.functional.pad(x, (before, after, before, after))
        return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
