"""The training loss: main head plus the weighted auxiliary (Overview-Net) head."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Criterion = Callable[[Tensor, Tensor], Tensor]


def overlock_loss(output: Tensor | tuple[Tensor, Tensor], target: Tensor, criterion: Criterion, aux_weight: float):
    """``criterion(main) + aux_weight * criterion(aux)`` for a (main, aux) output, else ``criterion(output)``.

    Returns the loss and the main logits (for accuracy).
    """
    if isinstance(output, tuple):
        main, aux = output
        return criterion(main, target) + aux_weight * criterion(aux, target), main
    return criterion(output, target), output


@torch.no_grad()
def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many targets are among the top-k logits, for each k (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == target[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]
