"""Segmentation inference as mmsegmentation 0.30 runs the official UperNet: whole-image and sliding-window modes,
optional flip and multi-scale testing, and the ADE20K test pipeline.

- Whole image: the decode head's logits (stride 4) resized bilinearly to the network input.
- Sliding window: crops of ``crop_size`` every ``stride`` pixels, the last ones shifted back inside the image; the
  crops' logits are summed and divided per pixel by the number of crops covering it.
- Test-time augmentation: for every scale ratio (and, with flip, for the mirrored image too) the image goes
  through the test pipeline and the model, the logits are resized to the original image size and turned into
  probabilities (softmax); the probabilities of all passes are averaged.
- ADE20K test pipeline: resize keeping the aspect ratio to fit (2048, 512) x ratio (bilinear), then each side up
  to a multiple of 32 (bicubic), both by OpenCV on 8-bit images as mmcv resizes, then normalised with the ImageNet
  mean and standard deviation in 0-255 units. ``read_image`` decodes image files as mmcv does (EXIF orientation
  applied), so images predicted here match the ones ``overlock seg validate`` and training read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.image_io import read_image
from ..models.overlock import dense_state_dict
from .config import SegTrainConfig, build_segmenter
from .data import prepare_test_image
from .upernet import (
    UPERNET_VARIANTS, create_upernet, load_upernet_weights, read_checkpoint, resize_to,
)

__all__ = [
    "LoadedSegmenter",
    "SegInference",
    "TEST_SCALE",
    "MS_RATIOS",
    "prepare_test_image",
    "read_image",
    "load_segmenter",
    "predict_probabilities",
    "slide_logits",
    "whole_logits",
]

TEST_SCALE = (2048, 512)  # (long side, short side) the ADE20K test images are fitted into
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the usual multi-scale test ratios


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


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: np.ndarray, settings: SegInference = SegInference(),
                          device: torch.device | str = "cpu") -> Tensor:
    """Class probabilities (num_classes, H, W) of one (H, W, 3) uint8 RGB image at its own size, averaged over the
    test-time passes of ``settings``."""
    height, width = image.shape[:2]
    total: Tensor | None = None
    passes = 0
    for ratio in settings.ratios:
        scale = (int(settings.scale[0] * ratio), int(settings.scale[1] * ratio))
        batch = prepare_test_image(image, scale)[None].to(device)
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



@dataclass
class LoadedSegmenter:
    """A segmentation model in eval mode, its class names (when the checkpoint knows them) and its origin."""

    model: nn.Module
    classes: list[str] | None
    description: str


def _official_variant(state_dict: dict[str, Tensor], num_classes: int) -> str | None:
    """The official UperNet variant whose keys and shapes ``state_dict`` has (built on the meta device), if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name, variant in UPERNET_VARIANTS.items():
        with torch.device("meta"):
            candidate = create_upernet(variant, num_classes=num_classes)
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            return name
    return None


def load_segmenter(weights: str | Path, backbone: str | None = None) -> LoadedSegmenter:
    """An UperNet from a checkpoint: a run of ``overlock seg train`` (its saved configuration rebuilds the model), or
    an official ``upernet_overlock_*_ade20k.pth`` (the variant recognised from its keys, or named by ``backbone``)."""
    checkpoint = read_checkpoint(weights)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if isinstance(config, dict) and "backbone" in config and "channels" in config:  # one of our runs
        cfg = SegTrainConfig(**config).updated(pretrained=None, weights=None, drop_path=0.0)
        classes = [str(c) for c in checkpoint.get("classes") or []]
        model = load_upernet_weights(build_segmenter(cfg, len(classes)), checkpoint, weights)
        return LoadedSegmenter(model.eval(), classes, f"{cfg.backbone} UperNet, run checkpoint {weights}")
    state_dict = dense_state_dict(checkpoint)
    head = state_dict.get("decode_head.conv_seg.weight")
    if head is None:
        raise ValueError(f"{weights} holds no UperNet decode head (decode_head.conv_seg.weight)")
    if backbone is None:
        variant = _official_variant(state_dict, head.shape[0])
        if variant is None:
            raise ValueError(f"{weights} is not an official UperNet checkpoint of OverLoCK-T, -S or -B: name its "
                             f"backbone with --backbone")
        backbone = UPERNET_VARIANTS[variant]
    aux = state_dict.get("auxiliary_head.conv_seg.weight")
    model = create_upernet(backbone, num_classes=head.shape[0], channels=head.shape[1],
                           aux_channels=aux.shape[1] if aux is not None else None)
    load_upernet_weights(model, state_dict, weights)
    return LoadedSegmenter(model.eval(), None, f"{backbone} UperNet, {weights}")
