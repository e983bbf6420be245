"""Training and evaluation: recipe presets, the loop, checkpoints, distributed helpers."""
from .checkpoint import CheckpointError, load_training_checkpoint, save_atomic
from .config import PRESETS, TrainConfig, preset
from .engine import NonFiniteLossError, build_criterion, build_model, learning_rate, train
from .evaluate import evaluate
from .loss import overlock_loss, topk_correct

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
