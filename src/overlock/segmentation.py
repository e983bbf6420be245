"""Segmentation inference as mmsegmentation 0.30 runs the official UperNet: whole-image and sliding-window modes,
optional flip and multi-scale testing, and the ADE20K test pipeline.

- Whole image: the decode head's logits (stride 4) resized bilinearly to the network input.
- Sliding window: crops of ``crop_size`` every ``stride`` pixels, the last ones shifted back inside the image; the
  crops' logits are summed and divided per pixel by the number of crops covering it.
- Test-time augmentation: for every scale ratio (and, with flip, for the mirrored image too) the image goes
  through the test pipeline and the model, the logits are resized to the original image size and turned into
  probabilities (softmax); the probabilities of all passes are averaged.
- ADE20K test pipeline: resize keeping the aspect ratio to fit (2048, 512) x ratio (bilinear), then each side up
  to a multiple of 32 (bicubic), both rounded to 8 bits as OpenCV does for 8-bit images, then normalised with the
  ImageNet mean and standard deviation in 0-255 units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.upernet import resize_to

__all__ = [
    "SegInference",
    "TEST_SCALE",
    "MS_RATIOS",
    "fit_size",
    "multiple_size",
    "normalize",
    "prepare_test_image",
    "predict_probabilities",
    "slide_logits",
    "whole_logits",
]

TEST_SCALE = (2048, 512)  # (long side, short side) the ADE20K test images are fitted into
SIZE_DIVISOR = 32
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the usual multi-scale test ratios
MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SegInference:
    """How to run a segmentation model on an image: ``mode`` 'whole' or 'slide' (``crop_size``, ``stride``, as
    (height, width)), the scale ratios of the test pipeline and whether to add mirrored passes."""

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scale: tuple[int, int] = TEST_SCALE
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        if min(*self.crop_size, *self.stride) < 1 or any(r <= 0 for r in self.ratios) or not self.ratios:
            raise ValueError("crop size, stride and scale ratios must be positive")


def whole_logits(model: nn.Module, images: Tensor) -> Tensor:
    """Logits at the input size: the decode head's logits resized bilinearly (mmsegmentation's ``encode_decode``)."""
    return resize_to(model(images), images.shape[-2:])


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """First pixel of each window along an axis: every ``stride``, the last window shifted back inside the image
    (a window is the whole axis when the axis is shorter than the crop)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, length) - crop, 0) for i in range(count)]


def slide_logits(model: nn.Module, images: Tensor, crop_size: Sequence[int] = (512, 512),
                 stride: Sequence[int] = (341, 341)) -> Tensor:
    """Sliding-window logits at the input size: each window's whole-image logits, summed where windows overlap and
    divided by the number of windows covering each pixel."""
    height, width = images.shape[-2:]
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    total: Tensor | None = None
    count = images.new_zeros(1, 1, height, width)
    for top in _window_starts(height, crop_h, stride_h):
        for left in _window_starts(width, crop_w, stride_w):
            bottom, right = min(top + crop_h, height), min(left + crop_w, width)
            logits = whole_logits(model, images[:, :, top:bottom, left:right])
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], height, width)
            total[:, :, top:bottom, left:right] += logits
            count[:, :, top:bottom, left:right] += 1
    assert total is not None
    return total / count


def fit_size(height: int, width: int, scale: Sequence[int] = TEST_SCALE) -> tuple[int, int]:
    """(height, width) resized keeping the aspect ratio to fit ``scale`` (long side, short side), rounded to the
    nearest pixel (mmcv's ``rescale_size``)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def multiple_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Each side rounded up to a multiple of ``divisor``."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def resize_uint8(image: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """A (C, H, W) 0-255 image resized without antialiasing (as OpenCV resizes) and rounded back to 8-bit values."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=list(size), mode=mode, align_corners=False)[0]
    return resized.round().clamp(0, 255)


def normalize(image: Tensor) -> Tensor:
    """(3, H, W) RGB in 0-255 to the network's input: ImageNet mean and standard deviation, in 0-255 units."""
    mean = torch.tensor(MEAN_255, dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(STD_255, dtype=torch.float32).reshape(3, 1, 1)
    return (image.float() - mean) / std


def prepare_test_image(image: np.ndarray | Tensor, ratio: float = 1.0, scale: Sequence[int] = TEST_SCALE,
                       divisor: int = SIZE_DIVISOR) -> Tensor:
    """The test pipeline: an (H, W, 3) uint8 RGB image fitted into ``scale`` x ``ratio`` (bilinear), each side
    then up to a multiple of ``divisor`` (bicubic), normalised; returns (3, H', W') float32."""
    pixels = torch.as_tensor(np.asarray(image)).permute(2, 0, 1).float()
    scaled = (int(scale[0] * ratio), int(scale[1] * ratio))
    fitted = resize_uint8(pixels, fit_size(*pixels.shape[-2:], scaled), "bilinear")
    return normalize(resize_uint8(fitted, multiple_size(*fitted.shape[-2:], divisor), "bicubic"))


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: np.ndarray, settings: SegInference = SegInference(),
                          device: torch.device | str = "cpu") -> Tensor:
    """Class probabilities (num_classes, H, W) of one (H, W, 3) uint8 RGB image at its own size, averaged over the
    test-time passes of ``settings``."""
    height, width = image.shape[:2]
    total: Tensor | None = None
    passes = 0
    for ratio in settings.ratios:
        batch = prepare_test_image(image, ratio, settings.scale)[None].to(device)
        for flip in (False, True) if settings.flip else (False,):
            inputs = batch.flip(-1) if flip else batch
            if settings.mode == "slide":
                logits = slide_logits(model, inputs, settings.crop_size, settings.stride)
            else:
                logits = whole_logits(model, inputs)
            probs = torch.softmax(resize_to(logits.float(), [height, width]), dim=1)[0]
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
            passes += 1
    assert total is not None
    return total / passes
