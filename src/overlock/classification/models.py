"""Building a run's model from its configuration: shared by training and by inference (which must not need the
training engine to rebuild the model of a run checkpoint)."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

import overlock  # noqa: F401  (registers the models)

from ..models import resolve_model_name
from ..weights_file import check_checkpoint_file
from .config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int = 3) -> nn.Module:
    """The model of ``cfg``, from a checkpoint file when ``cfg.pretrained`` is set (heads re-initialised
    when the number of classes differs)."""
    name = resolve_model_name(cfg.model)  # an ablation row's table name gives its timm model
    if name not in timm.list_models():
        raise ValueError(f"unknown model {cfg.model!r}")
    kwargs: dict[str, Any] = dict(cfg.model_kwargs, num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.pretrained:
        check_checkpoint_file(cfg.pretrained)  # any timm model: a clear error before timm reads the file
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=cfg.pretrained))
    return timm.create_model(name, **kwargs)
