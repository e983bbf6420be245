"""Seeding every random step of a run from (seed, pass, micro-batch), and the RNG states a checkpoint keeps.

Samples are seeded by :class:`overlock.data.seeded.SeededDataset` from (seed, pass, index); what a training step
draws itself (dropout, drop path, Mixup) is seeded here, so a run killed and resumed repeats no draw and skips none.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..data.seeded import mix_seed


def seed_step(seed: int, data_pass: int, micro: int) -> None:
    """Seed torch, numpy and ``random`` for the micro-batch ``micro`` of pass ``data_pass``."""
    value = mix_seed(seed, data_pass, micro)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def rng_state() -> dict[str, Any]:
    """Every RNG's state, in types a weights-only ``torch.load`` reads (numpy's key array as a tensor)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def restore_rng(saved: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`rng_state` (or of a checkpoint that kept numpy's state as numpy gives it)."""
    numpy_state = saved["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["state"]["key"].numpy().astype(np.uint32)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key}}
    torch.set_rng_state(saved["torch"])
    np.random.set_state(numpy_state)
    random.setstate(saved["python"])
