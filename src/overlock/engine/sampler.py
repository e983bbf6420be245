"""A sampler whose order is a pure function of (seed, epoch): resumable mid-epoch and shardable."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.seeded import SeededDataset
from .distributed import DistInfo


class EpochSampler(Sampler[int]):
    """Shuffles ``size`` indices with a generator seeded by (seed, epoch), deals them out to ``world_size``
    ranks in turn (so the union of one step's per-rank batches is one single-process batch), and can start
    after the first ``skip`` indices of this rank (resuming inside an epoch). With ``even`` the tail is
    dropped so every rank gets the same count; without it (evaluation) every index is used once."""

    def __init__(
        self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, even: bool = True
    ):
        self.size, self.shuffle, self.seed, self.even = size, shuffle, seed, even
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.even:
            order = order[: len(self) * self.world_size]
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        """Indices of this rank: equal for every rank when ``even`` (training), else all are covered."""
        if self.even:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))



def training_loader(dataset: Dataset, seed: int, batch_size: int, accum: int, workers: int, info: DistInfo,
                    collate_fn: Callable[[list], Any]) -> tuple[DataLoader, int]:
    """The seeded, resumable training loader of ``dataset`` for this process, and the micro-batches of one pass
    that make whole optimizer steps of ``accum`` micro-batches (a one-line error when there are none)."""
    seeded = SeededDataset(dataset, seed)
    sampler = EpochSampler(len(seeded), shuffle=True, seed=seed, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(seeded, batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                        collate_fn=collate_fn)
    micro_per_pass = len(loader) // accum * accum
    if micro_per_pass == 0:
        raise ValueError(f"{len(dataset)} training images give no full step of {batch_size * accum * info.world_size} "
                         f"images ({batch_size} x {accum} x {info.world_size} processes): lower --global-batch")
    return loader, micro_per_pass
