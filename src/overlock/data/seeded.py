"""Per-sample random seeds, so that augmentation depends only on (seed, epoch, index)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (deterministic across processes and Python runs)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value


class SeededDataset(Dataset):
    """Wraps a dataset; each item is produced under torch, numpy and ``random`` seeded by (seed, epoch, index),
    so a resumed or multi-process run augments every sample exactly as a single uninterrupted run."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = mix_seed(self.seed, self.epoch, index)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]
