"""Evaluation: loss, top-1 and top-5 over a loader, optionally restricted to a class subset."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..engine.distributed import DistInfo, all_reduce_sum
from .loss import topk_correct


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    info: DistInfo,
    amp_dtype: torch.dtype | None = None,
    class_subset: Sequence[int] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (%) over ``loader`` (summed over processes).

    ``class_subset``: indices of the model's outputs that the dataset's classes map to, in order
    (ImageNet-A/-R evaluate a 1000-class model on 200 classes this way).
    """
    model.eval()
    subset = torch.tensor(class_subset, device=info.device) if class_subset is not None else None
    totals = torch.zeros(5, dtype=torch.float64, device=info.device)  # loss, top1, top5, count, skipped
    for batch in loader:
        images, targets, skipped = batch if len(batch) == 3 else (*batch, 0)
        totals[4] += skipped
        if len(targets) == 0:
            continue
        images, targets = images.to(info.device), targets.to(info.device)
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        if subset is not None:
            logits = logits[:, subset]
        top1, top5 = topk_correct(logits, targets)
        totals += torch.tensor(
            [F.cross_entropy(logits, targets, reduction="sum").item(), top1, top5, len(targets), 0],
            dtype=torch.float64, device=info.device,
        )
    totals = all_reduce_sum(totals, info)
    count = max(totals[3].item(), 1.0)
    return {
        "loss": totals[0].item() / count,
        "top1": 100 * totals[1].item() / count,
        "top5": 100 * totals[2].item() / count,
        "images": int(totals[3].item()),
        "skipped": int(totals[4].item()),
    }
