"""Reading, resizing and recolouring images as mmcv 1.x pipelines do (mmsegmentation 0.30, mmdetection 2.28).

mmcv does these steps with OpenCV, and OpenCV's 8-bit arithmetic is what the official models were trained and
tested on: a float resize rounded to 8 bits, an exact nearest-neighbour rule or an own RGB/HSV conversion each give
other pixels on a few per cent of an image. So these functions call OpenCV as mmcv does, on uint8 RGB arrays:

- decoding: ``cv2.imdecode`` with ``IMREAD_COLOR`` (mmcv's ``imfrombytes(flag='color')``, the ``LoadImageFromFile``
  default): EXIF orientation tags are applied, alpha is dropped, grey images get three channels, 16-bit images are
  scaled to 8 bits;
- sizes kept in ratio: ``int(side * factor + 0.5)`` (mmcv's ``rescale_size``);
- resizing: ``cv2.resize``, ``INTER_LINEAR`` (or ``INTER_CUBIC``) for images, ``INTER_NEAREST`` for masks;
- colour: ``cv2.cvtColor`` between RGB and 8-bit HSV (hue 0-179).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def decode_image(content: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an encoded image, EXIF orientation applied; ValueError when OpenCV cannot decode it."""
    if not content:
        raise ValueError("empty file")
    try:
        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"OpenCV cannot decode it: {str(exc).strip().splitlines()[-1]}") from exc
    if image is None:
        raise ValueError("not an image OpenCV can decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the image file at ``path``, decoded as mmcv decodes it (see ``decode_image``)."""
    return decode_image(Path(path).read_bytes())


def fit_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """(height, width) resized keeping the aspect ratio to fit ``scale`` (long side, short side), rounded to the
    nearest pixel (mmcv's ``rescale_size``)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 resized to ``size`` (height, width) by OpenCV (``mode`` 'bilinear' or 'bicubic'), in its
    fixed-point 8-bit arithmetic, as ``mmcv.imresize`` resizes."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"mode must be one of {tuple(INTERPOLATIONS)}, got {mode!r}")
    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=INTERPOLATIONS[mode])


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer mask resized to ``size`` (height, width) by OpenCV's ``INTER_NEAREST`` (source index
    ``floor(i * (1 / (out / in)))`` in double precision), as mmcv resizes segmentation maps; values must fit int32."""
    if mask.shape == tuple(size):
        return mask
    resized = cv2.resize(np.ascontiguousarray(mask, dtype=np.int32), (size[1], size[0]),
                         interpolation=cv2.INTER_NEAREST)
    return resized.astype(mask.dtype)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB to OpenCV's 8-bit HSV: H in [0, 180) (degrees / 2), S and V in [0, 255]."""
    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2HSV)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit HSV back to uint8 RGB."""
    return cv2.cvtColor(np.ascontiguousarray(hsv, dtype=np.uint8), cv2.COLOR_HSV2RGB)
