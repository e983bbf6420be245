"""Image classification: recipe presets and their configuration, the model and loss, evaluation, the trainer
(on :mod:`overlock.engine`) and inference.

The trainer (``train`` and its helpers) is imported on first use, so that inference can use the light modules of
this package (configuration, model building, evaluation, :mod:`.inference`) without loading the training loop.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import PRESETS, TrainConfig, preset
from .evaluate import evaluate
from .loss import overlock_loss, topk_correct
from .models import build_model

_TRAINER_NAMES = ("build_criterion", "learning_rate", "train")

__all__ = [
    "PRESETS",
    "TrainConfig",
    "build_criterion",
    "build_model",
    "evaluate",
    "learning_rate",
    "overlock_loss",
    "preset",
    "topk_correct",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        return getattr(importlib.import_module(".training", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
