"""Segmentation metrics as mmsegmentation 0.30 computes them: per-class intersection and union summed over the data
set, then aAcc (labelled pixels right), per-class IoU and accuracy, mIoU and mAcc (means over the classes that
occur: a class that is neither labelled nor predicted anywhere has no IoU; one that is never labelled has no
accuracy), all in percent. Ignored pixels take no part."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..engine.distributed import DistInfo, all_reduce_sum

IGNORE_INDEX = 255


class IoUAccumulator:
    """Sums per-class areas (intersection, union, prediction, label) over batches, then gives the metrics."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.areas = torch.zeros(4, num_classes, dtype=torch.float64, device=device)

    def update(self, predicted: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        """Add a batch of predicted class maps and label maps of the same shape."""
        labelled = labels != ignore_index
        pred, label = predicted[labelled].long(), labels[labelled].long()
        n = self.num_classes
        intersect = torch.bincount(label[pred == label], minlength=n)[:n]
        area_pred = torch.bincount(pred, minlength=n)[:n]
        area_label = torch.bincount(label, minlength=n)[:n]
        self.areas += torch.stack([intersect, area_pred + area_label - intersect, area_pred, area_label]).to(
            self.areas)

    def all_reduce(self, info: DistInfo) -> None:
        """Sum the areas over the processes of a distributed run."""
        self.areas = all_reduce_sum(self.areas.to(info.device), info)

    def compute(self, classes: Sequence[str] | None = None) -> dict:
        """aAcc, mIoU, mAcc (percent) and per-class IoU and accuracy (percent, NaN where undefined)."""
        intersect, union, _, label = self.areas.cpu()
        iou = (intersect / union).tolist()  # 0/0 -> nan: a class absent from predictions and labels
        acc = (intersect / label).tolist()  # 0/0 -> nan: a class absent from the labels
        names = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        return {
            "aAcc": 100 * intersect.sum().item() / max(label.sum().item(), 1),
            "mIoU": 100 * _nanmean(iou),
            "mAcc": 100 * _nanmean(acc),
            "per_class": {name: {"IoU": 100 * i, "Acc": 100 * a} for name, i, a in zip(names, iou, acc)},
        }


def _nanmean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else float("nan")
