"""The Fashion-MNIST reader on hand-made IDX files, and its transform."""
from __future__ import annotations

import gzip
import struct

import pytest
import torch

from overlock.data import FashionMNIST, FashionMNISTTransform
from overlock.data.fashion_mnist import read_idx


def _write_idx(path, array: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(array.flatten().tolist()))


def test_reads_idx_files(tmp_path):
    images = torch.arange(3 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 28, 28)
    labels = torch.tensor([7, 0, 9], dtype=torch.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    assert torch.equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    data = FashionMNIST("test", tmp_path)
    assert len(data) == 3 and data[0][1] == 7 and data.classes[9] == "Ankle boot"
    assert torch.equal(data[2][0], images[2:3])


def test_truncated_and_missing_files(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST("train", tmp_path)


def test_transform_pads_normalises_and_shifts():
    image = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    out = FashionMNISTTransform(32)(image)
    assert out.shape == (1, 32, 32)
    background, foreground = (0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530
    assert torch.allclose(out[0, :2], torch.tensor(background)) and torch.allclose(out[0, 2:30, 2:30], torch.tensor(foreground))
    torch.manual_seed(0)
    shifted = [FashionMNISTTransform(32, train=True)(image) for _ in range(8)]
    assert all(s.shape == (1, 32, 32) for s in shifted) and any(not torch.equal(s, out) for s in shifted)
