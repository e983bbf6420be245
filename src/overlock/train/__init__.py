"""Training and evaluation: recipe presets, the loop, checkpoints, distributed helpers.

The training engine (``train`` and its helpers) is imported on first use, so that inference can use the light
modules of this package (configuration, model building, checkpoints, evaluation) without loading it.
"""
from __future__ import annotations

import importlib
from typing import Any

from .checkpoint import CheckpointError, load_training_checkpoint, save_atomic
from .config import PRESETS, TrainConfig, preset
from .evaluate import evaluate
from .loss import overlock_loss, topk_correct
from .models import build_model

_ENGINE_NAMES = ("NonFiniteLossError", "build_criterion", "learning_rate", "train")

__all__ = [
    "PRESETS",
    "CheckpointError",
    "NonFiniteLossError",
    "TrainConfig",
    "build_criterion",
    "build_model",
    "evaluate",
    "learning_rate",
    "load_training_checkpoint",
    "overlock_loss",
    "preset",
    "save_atomic",
    "topk_correct",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        return getattr(importlib.import_module(".engine", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
