"""Segmentation evaluation: mIoU, mAcc, aAcc and per-class figures of a model over a data set, each image
predicted at its own size as the test settings say, shared out over the processes of a distributed run."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..engine.distributed import DistInfo, all_reduce_sum
from ..engine.sampler import EpochSampler
from .data import SegmentationDataset, Skipped
from .inference import SegInference, predict_probabilities
from .metrics import IoUAccumulator


def _as_is(item: Any) -> Any:
    return item


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset: SegmentationDataset, settings: SegInference, info: DistInfo,
                          workers: int = 0, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and per-class IoU/accuracy over ``dataset`` (each process a share; summed), each image
    predicted at its own size as ``settings`` says; unusable samples counted in ``skipped``."""
    model.eval()
    sampler = EpochSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size, even=False)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, collate_fn=_as_is)
    accumulator = IoUAccumulator(dataset.num_classes, info.device)
    counts = torch.zeros(2, dtype=torch.float64, device=info.device)  # images, skipped
    for sample in loader:
        if isinstance(sample, Skipped):
            counts[1] += 1
            continue
        image, mask = sample
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs = predict_probabilities(model, image, settings, info.device)
        accumulator.update(probs.argmax(0), torch.as_tensor(mask, device=info.device))
        counts[0] += 1
    accumulator.all_reduce(info)
    counts = all_reduce_sum(counts, info)
    return {**accumulator.compute(dataset.classes), "images": int(counts[0].item()), "skipped": int(counts[1].item())}
