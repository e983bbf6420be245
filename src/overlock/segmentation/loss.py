"""The segmentation training loss and pixel accuracy, as mmsegmentation 0.30 computes them for the official UperNet.

Each head's logits are resized (bilinear) to the label size; the cross-entropy of every pixel is averaged over
*all* pixels, ignored ones counting as zero (mmsegmentation's ``avg_non_ignore=False``); the auxiliary head's
loss is weighted (0.4 in the official configs) and the total is the sum.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .upernet import resize_to

IGNORE_INDEX = 255


def cross_entropy_all_pixels(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean per-pixel cross-entropy over every pixel of ``labels`` (B, H, W); ignored pixels count as zero."""
    logits = resize_to(logits, labels.shape[-2:])
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none").mean()


@torch.no_grad()
def pixel_accuracy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Percent of the labelled pixels whose arg-max class is right (shape (1,), mmsegmentation's ``acc_seg``,
    including its epsilon in numerator and denominator)."""
    predicted = resize_to(logits, labels.shape[-2:]).argmax(dim=1)
    labelled = labels != ignore_index
    eps = torch.finfo(torch.float32).eps
    correct = (predicted == labels)[labelled].float().sum().reshape(1) + eps
    return correct * (100.0 / (labelled.sum().item() + eps))


def segmentation_losses(
    outputs: Union[Tensor, tuple[Tensor, Tensor]], labels: Tensor, aux_weight: float = 0.4,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Tensor]:
    """mmsegmentation's loss dictionary for (decode logits, auxiliary logits) or decode logits alone, and
    ``loss``, their total. ``labels``: (B, H, W) or (B, 1, H, W) class indices, ``ignore_index`` unlabelled."""
    if labels.dim() == 4:
        labels = labels.squeeze(1)
    decode, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    losses = {
        "decode.loss_ce": cross_entropy_all_pixels(decode, labels, ignore_index),
        "decode.acc_seg": pixel_accuracy(decode, labels, ignore_index),
    }
    total = losses["decode.loss_ce"]
    if aux is not None:
        losses["aux.loss_ce"] = aux_weight * cross_entropy_all_pixels(aux, labels, ignore_index)
        losses["aux.acc_seg"] = pixel_accuracy(aux, labels, ignore_index)
        total = total + losses["aux.loss_ce"]
    losses["loss"] = total
    return losses
