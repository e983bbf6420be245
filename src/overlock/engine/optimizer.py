"""The optimizer step shared by the trainers: mixed precision's gradient scaler and gradient clipping."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp choice -> autocast dtype


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, clip_grad: Optional[float]) -> None:
    """One optimizer step from the accumulated (scaled) gradients: unscaled and clipped to ``clip_grad`` when
    set, stepped through the gradient scaler, then cleared."""
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
