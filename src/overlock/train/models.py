"""Loading a model for evaluation: a timm name with optional weights, or a checkpoint of our own runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn

import overlock  # noqa: F401  (registers the models)

from ..data import FashionMNISTTransform
from .checkpoint import CheckpointError
from .config import TrainConfig
from .engine import build_model


@dataclass
class EvalModel:
    """A model ready for inference, the names of its classes (when known) and its input transform.

    ``folder_classes``: the class-folder names of each output in order (an ``overlock train`` run's folders,
    or the ImageNet WordNet ids for a 1000-class model), when known.
    """

    model: nn.Module
    classes: list[str] | None
    transform: Callable
    folder_classes: list[str] | None = None


def load_for_eval(name: str | None, weights: str | None = None) -> EvalModel:
    """An eval-mode model, its class names (when known) and its input transform.

    ``weights`` may be an official checkpoint, any timm-loadable file, or ``best.pth``/``ema.pth``/``last.pth``
    of an ``overlock train`` run (which rebuilds the run's model, so ``name`` may be omitted).
    """
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {weights}")
    run = _run_checkpoint(weights) if weights else None
    if run is not None:
        cfg = TrainConfig(**run["config"])
        classes = run.get("classes")
        in_chans = 1 if cfg.dataset == "fashion_mnist" else 3
        model = build_model(cfg.updated(pretrained=None, drop_path=0.0), cfg.num_classes or len(classes), in_chans)
        model.load_state_dict(run["model"])
        if cfg.dataset == "fashion_mnist":
            transform = FashionMNISTTransform(cfg.img_size)
        else:
            transform = create_transform(**resolve_data_config({"input_size": (3, cfg.img_size, cfg.img_size)},
                                                               model=model))
        return EvalModel(model.eval(), classes, transform, list(classes) if classes else None)
    if not name:
        raise ValueError("a model name is needed unless --weights is a checkpoint of an overlock train run")
    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}")
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)) if weights else {}
    model = timm.create_model(name, **kwargs)
    classes = folders = None
    if model.num_classes == 1000:
        info = timm.data.ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(1000)]
        folders = list(info.label_names())
    return EvalModel(model.eval(), classes, create_transform(**resolve_data_config({}, model=model)), folders)


def _run_checkpoint(path: str) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "config" in state and "model" in state:
        return state
    return None
