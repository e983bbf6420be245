"""RandAugment as the paper trained with it, on current Pillow.

timm's "posterize, increasing" op (in the paper's ``rand-m9-mstd0.5-inc1``) keeps ``4 - int(level * 4)`` bits,
so a magnitude drawn at the top of its range asks for 0 bits. Pillow returned a black image for that until
version 13, which raises ``ValueError`` instead: about one image in 660 of the recipe (each of an image's two ops
is this one, applied, at magnitude 10 with chance 1/15 x 0.5 x 0.023), enough to stop every ImageNet epoch.
:func:`keep_zero_bit_posterize` gives the posterize ops of one transform back their old meaning without
touching timm or Pillow themselves.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` high bits of every channel: 8 or more leaves the image as it is, 0 or fewer
    gives a black image (what Pillow before 13 returned for 0 bits; the op's limit, not an error)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform: Any) -> list[Any]:
    """The timm ``AugmentOp``s inside ``transform``: a Compose's steps, RandAugment's or AugMix's ``ops``,
    AutoAugment's sub-policies."""
    found = []
    for step in getattr(transform, "transforms", [transform]):
        ops = list(getattr(step, "ops", []))
        for sub_policy in getattr(step, "policy", []):
            ops += list(sub_policy)
        found += [op for op in ops if hasattr(op, "aug_fn") and hasattr(op, "name")]
    return found


def keep_zero_bit_posterize(transform: Any) -> int:
    """Give the posterize ops of ``transform`` (this instance only) :func:`posterize`, which turns a 0-bit
    request into a black image instead of an error; returns how many ops were changed."""
    ops = [op for op in _augment_ops(transform) if op.name in POSTERIZE_OPS]
    for op in ops:
        op.aug_fn = posterize
    return len(ops)
