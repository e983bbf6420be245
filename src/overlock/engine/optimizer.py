"""What the trainers share around the optimizer: mmcv's parameter groups by name substring and linear warm-up
(the dense recipes), and the step with mixed precision's gradient scaler and gradient clipping."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp choice -> autocast dtype


def substring_decay_groups(model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str]) -> list[dict[str, Any]]:
    """AdamW groups as mmcv builds them from the official ``paramwise_cfg``: weight decay 0 for every trainable
    parameter whose full name contains one of ``no_decay_keys`` as a substring, ``weight_decay`` for all others
    (BatchNorms and biases included)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(key in name for key in no_decay_keys) else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def linear_warmup(lr: float, step: int, warmup_iters: int, warmup_ratio: float) -> float:
    """``lr`` at iteration ``step`` (0-based) under mmcv's ``warmup='linear'``: from ``lr * warmup_ratio`` up to
    ``lr`` over the first ``warmup_iters`` iterations."""
    if step < warmup_iters:
        lr *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
    return lr


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, clip_grad: Optional[float]) -> None:
    """One optimizer step from the accumulated (scaled) gradients: unscaled and clipped to ``clip_grad`` when
    set, stepped through the gradient scaler, then cleared."""
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
