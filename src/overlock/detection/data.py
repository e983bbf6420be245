"""COCO-format instance data (an image folder + an instances JSON) and the official mmdet 2.28 pipelines.

``CocoInstances`` reads the JSON once, checks it and keeps per image the usable annotations the way mmdet's
``CocoDataset`` parses them: boxes ``[x, y, w, h]`` become ``(x1, y1, x2, y2)``; category ids map to contiguous
labels ``0..C-1`` in sorted-id order; masks come from polygons or RLE (pycocotools), decoded at the image size;
crowd boxes are kept apart as boxes to ignore. Annotations that cannot be used (a box of no area or outside its
image, an unknown category, an unknown image) are left out and counted in one warning per reason that names
the first; a JSON that is not COCO, or a data set left without images, is a one-line ``DetectionDataError``.
Training (``filter_empty=True``) leaves out images without annotations of a known category and images with
a side under 32 pixels, as mmdet's ``filter_empty_gt`` does.

Images are decoded and resized by ``overlock.data.image_io``, with OpenCV as mmcv 1.x does (``cv2.imdecode``,
``cv2.resize`` with ``INTER_LINEAR``, masks ``INTER_NEAREST``), so the network sees the official pixels. Pipelines
(seeded per sample by ``SeededDataset``): ``TrainPipeline1x`` (resize into (1333, 800), flip 0.5), ``TrainPipeline3x``
(flip, then either one multi-scale resize or resize + random crop + resize, as the official 3x configs), and
``EvalPipeline`` (resize into (1333, 800)); each normalises and pads to a multiple of 32.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch import Tensor
from torch.utils.data import Dataset

from ..data import image_io

_logger = logging.getLogger(__name__)

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
TEST_SCALE = (1333, 800)
MULTI_SCALES = tuple((short, 1333) for short in range(480, 801, 32))  # 480, 512, ..., 800
CROP_SCALES = ((400, 1333), (500, 1333), (600, 1333))
CROP_SIZE_RANGE = (384, 600)
MIN_TRAIN_SIZE = 32


class DetectionDataError(ValueError):
    """Detection data that cannot be used: a missing or non-COCO JSON, no images, an unreadable image."""


@dataclass
class ImageRecord:
    """One image's file and usable annotations in original pixels (crowd boxes apart, as boxes to ignore)."""

    image_id: int
    file: Path
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    labels: np.ndarray  # (n,) int64 in 0..C-1
    segmentations: list[Any]  # per box: polygons (list of lists) or RLE (dict)
    ignore_boxes: np.ndarray  # (k, 4) crowd boxes
    has_known_annotation: bool = False  # any annotation of a known category (crowd or unusable ones included)


@dataclass
class DetectionSample:
    """A sample ready for the network: normalised image and targets in its pixel frame."""

    image: Tensor  # (3, H_pad, W_pad)
    boxes: Tensor  # (n, 4)
    labels: Tensor  # (n,)
    masks: Tensor  # (n, H_pad, W_pad) uint8
    ignore_boxes: Tensor  # (k, 4)
    meta: dict[str, Any] = field(default_factory=dict)  # img_shape, pad_shape, ori_shape, scale_factor, flip, ...


# ---------------------------------------------------------------------- reading COCO
def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DetectionDataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionDataError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DetectionDataError(f"{path} is not a COCO instances file: the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DetectionDataError(f"{path} is not a COCO instances file: no '{key}' list")
    return data


def read_categories(data: dict, path: Path) -> tuple[list[int], list[str]]:
    """Category ids in sorted order (label = index) and their names."""
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError):
        raise DetectionDataError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    ids = [c for c, _ in categories]
    if not ids:
        raise DetectionDataError(f"{path} defines no categories")
    repeated = [c for c, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DetectionDataError(f"{path}: category id {repeated[0]} is defined more than once")
    return ids, [name for _, name in categories]


class _SkipCounter:
    """Counts left-out annotations per reason and logs one warning per reason naming the first case."""

    def __init__(self, path: Path):
        self.path, self.counts, self.first = path, Counter(), {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, example)

    def report(self) -> None:
        for reason, count in self.counts.items():
            _logger.warning("%s: left out %d %s (first: %s)", self.path, count, reason, self.first[reason])


def _parse_annotation(ann: dict, image: dict, label_of: dict[int, int], skips: _SkipCounter):
    """(box, label, segmentation, is_crowd) of a usable annotation, or None (counted in ``skips``)."""
    where = f"annotation {ann.get('id')} of image {ann.get('image_id')}"
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
        category = int(ann["category_id"])
    except (KeyError, TypeError, ValueError):
        skips.add("annotations without a 'bbox' [x, y, w, h] and a 'category_id'", where)
        return None
    if category not in label_of:
        skips.add("annotations of unknown category ids", f"{where}: category {category}")
        return None
    if ann.get("ignore", False):
        return None
    inter_w = max(0.0, min(x + w, image["width"]) - max(x, 0.0))
    inter_h = max(0.0, min(y + h, image["height"]) - max(y, 0.0))
    if inter_w * inter_h == 0:
        skips.add("boxes with no area inside their image", f"{where}: bbox {[x, y, w, h]}")
        return None
    if float(ann.get("area", w * h)) <= 0 or w < 1 or h < 1:
        skips.add("boxes of zero area or a side under 1 pixel", f"{where}: bbox {[x, y, w, h]}")
        return None
    return [x, y, x + w, y + h], label_of[category], ann.get("segmentation"), bool(ann.get("iscrowd", 0))


def read_coco(ann_file: str | Path, image_dir: str | Path) -> tuple[list[ImageRecord], list[int], list[str], dict]:
    """Every image of ``ann_file`` whose file exists under ``image_dir``, with its usable annotations;
    the sorted category ids, their names, and the JSON itself (the ground truth of COCO evaluation)."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = _load_json(ann_file)
    if not image_dir.is_dir():
        raise DetectionDataError(f"image folder not found: {image_dir}")
    category_ids, names = read_categories(data, ann_file)
    label_of = {c: i for i, c in enumerate(category_ids)}
    images: dict[int, dict] = {}
    for image in data["images"]:
        try:
            images[int(image["id"])] = {"file": str(image["file_name"]), "height": int(image["height"]),
                                            "width": int(image["width"])}
        except (KeyError, TypeError, ValueError):
            raise DetectionDataError(f"{ann_file}: every image needs 'id', 'file_name', 'height' and 'width'") from None
    skips = _SkipCounter(ann_file)
    parsed: dict[int, list] = {i: [] for i in images}
    known: set[int] = set()
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in images:
            first = ann.get("id") if isinstance(ann, dict) else ann
            skips.add("annotations of unknown image ids", f"annotation {first}")
            continue
        if ann.get("category_id") in label_of:
            known.add(image_id)
        result = _parse_annotation(ann, images[image_id], label_of, skips)
        if result is not None:
            parsed[image_id].append(result)
    records, missing = [], []
    for image_id, image in images.items():
        path = image_dir / image["file"]
        if not path.is_file():
            missing.append(path)
            continue
        anns = parsed[image_id]
        plain = [a for a in anns if not a[3]]
        crowd = [a for a in anns if a[3]]
        records.append(ImageRecord(
            image_id=image_id, file=path, height=image["height"], width=image["width"],
            boxes=np.array([a[0] for a in plain], dtype=np.float32).reshape(-1, 4),
            labels=np.array([a[1] for a in plain], dtype=np.int64),
            segmentations=[a[2] for a in plain],
            ignore_boxes=np.array([a[0] for a in crowd], dtype=np.float32).reshape(-1, 4),
            has_known_annotation=image_id in known,
        ))
    skips.report()
    if missing:
        _logger.warning("%s: left out %d images whose files are missing (first: %s)", ann_file, len(missing),
                        missing[0])
    if not records:
        raise DetectionDataError(f"none of the {len(images)} images of {ann_file} is in {image_dir}")
    return records, category_ids, names, data


def decode_masks(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """(n, height, width) uint8 masks from COCO polygons, uncompressed or compressed RLE (pycocotools)."""
    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for i, seg in enumerate(segmentations):
        if isinstance(seg, list):
            if not seg:
                continue
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = coco_mask.frPyObjects(seg, height, width)
        elif isinstance(seg, dict):
            rle = seg
        else:
            continue  # no mask: stays empty
        if list(rle.get("size", ())) != [height, width]:
            raise DetectionDataError(f"mask {i} is an RLE of size {rle.get('size')}, the image {height}x{width}")
        masks[i] = coco_mask.decode(rle)
    return masks


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded as mmcv decodes (``overlock.data.image_io``); a one-line error naming the file."""
    try:
        return image_io.read_image(path)
    except ValueError as exc:
        raise DetectionDataError(f"cannot decode image {path}: {exc}") from None


# ---------------------------------------------------------------------- pipeline steps (mmcv/mmdet semantics)
@dataclass
class Instances:
    """An image and its targets while the pipeline works on them (numpy, image pixels)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray  # (n, H, W) uint8
    ignore_boxes: np.ndarray
    flip: bool = False

    def resize(self, scale: Sequence[int]) -> None:
        """mmdet ``Resize(keep_ratio=True)``: image bilinear (OpenCV), masks nearest, boxes scaled by the w and h
        factors and clipped to the new image."""
        height, width = self.image.shape[:2]
        new_h, new_w = image_io.fit_size(height, width, scale)
        self.image = image_io.resize_image(self.image, (new_h, new_w))
        if len(self.masks):
            self.masks = np.stack([image_io.resize_mask(m, (new_h, new_w)) for m in self.masks])
        else:
            self.masks = np.zeros((0, new_h, new_w), dtype=np.uint8)
        factor = np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
        self.boxes = _clip(self.boxes * factor, new_h, new_w)
        self.ignore_boxes = _clip(self.ignore_boxes * factor, new_h, new_w)

    def hflip(self) -> None:
        width = self.image.shape[1]
        self.image = self.image[:, ::-1].copy()
        self.masks = self.masks[:, :, ::-1].copy()
        self.boxes = _flip_boxes(self.boxes, width)
        self.ignore_boxes = _flip_boxes(self.ignore_boxes, width)
        self.flip = not self.flip

    def random_crop(self, size_range: Sequence[int]) -> None:
        """mmdet ``RandomCrop(crop_type='absolute_range', allow_negative_crop=True)``: a crop of random height and
        width in ``size_range`` (at most the image's) at a random place; boxes shifted, clipped, and left out when
        nothing of them remains (with their masks and labels)."""
        height, width = self.image.shape[:2]
        crop_h = np.random.randint(min(height, size_range[0]), min(height, size_range[1]) + 1)
        crop_w = np.random.randint(min(width, size_range[0]), min(width, size_range[1]) + 1)
        top = np.random.randint(0, max(height - crop_h, 0) + 1)
        left = np.random.randint(0, max(width - crop_w, 0) + 1)
        self.image = self.image[top:top + crop_h, left:left + crop_w]
        crop_h, crop_w = self.image.shape[:2]
        offset = np.array([left, top, left, top], dtype=np.float32)
        boxes = _clip(self.boxes - offset, crop_h, crop_w)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.boxes, self.labels = boxes[keep], self.labels[keep]
        self.masks = self.masks[keep][:, top:top + crop_h, left:left + crop_w]
        ignore = _clip(self.ignore_boxes - offset, crop_h, crop_w)
        self.ignore_boxes = ignore[(ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])]


def _clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return flipped


def normalize_and_pad(image: np.ndarray, divisor: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> (3, H', W') float32 normalised with the ImageNet mean/std (0-255 units), zero-padded
    at the bottom and right to multiples of ``divisor``; returns it and (H', W')."""
    height, width = image.shape[:2]
    pad_h, pad_w = math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    pixels = (pixels - torch.tensor(MEAN_RGB).view(3, 1, 1)) / torch.tensor(STD_RGB).view(3, 1, 1)
    return torch.nn.functional.pad(pixels, (0, pad_w - width, 0, pad_h - height)), (pad_h, pad_w)


def to_sample(inst: Instances, meta: dict[str, Any], divisor: int = 32) -> DetectionSample:
    """Normalise and pad the image (and the masks, with zeros) and fill in the meta data mmdet keeps."""
    height, width = inst.image.shape[:2]
    image, (pad_h, pad_w) = normalize_and_pad(inst.image, divisor)
    masks = np.zeros((len(inst.masks), pad_h, pad_w), dtype=np.uint8)
    masks[:, :height, :width] = inst.masks
    ori_h, ori_w = meta["ori_shape"][:2]
    meta = dict(meta, img_shape=(height, width, 3), pad_shape=(pad_h, pad_w, 3), flip=inst.flip,
                scale_factor=np.array([width / ori_w, height / ori_h] * 2, dtype=np.float32))
    return DetectionSample(image, torch.from_numpy(inst.boxes).float(), torch.from_numpy(inst.labels).long(),
                           torch.from_numpy(masks), torch.from_numpy(inst.ignore_boxes).float(), meta)


class TrainPipeline1x:
    """The official 1x training pipeline: resize into (1333, 800) keeping the ratio, horizontal flip with
    probability 0.5, normalise, pad to 32."""

    def __init__(self, scale: Sequence[int] = TEST_SCALE, flip_prob: float = 0.5):
        self.scale, self.flip_prob = tuple(scale), flip_prob

    def __call__(self, inst: Instances) -> Instances:
        inst.resize(self.scale)
        if np.random.rand() < self.flip_prob:
            inst.hflip()
        return inst


class TrainPipeline3x:
    """The official 3x pipeline (DETR-style): flip with probability 0.5, then one of two policies with equal
    chance: a resize to a random scale of ``scales``; or a resize to a random scale of ``crop_scales``, a random
    crop with sides in ``crop_size_range``, and a resize to a random scale of ``scales``."""

    def __init__(self, scales: Sequence[Sequence[int]] = MULTI_SCALES,
                 crop_scales: Sequence[Sequence[int]] = CROP_SCALES,
                 crop_size_range: Sequence[int] = CROP_SIZE_RANGE, flip_prob: float = 0.5):
        self.scales, self.crop_scales = [tuple(s) for s in scales], [tuple(s) for s in crop_scales]
        self.crop_size_range, self.flip_prob = tuple(crop_size_range), flip_prob

    def __call__(self, inst: Instances) -> Instances:
        if np.random.rand() < self.flip_prob:
            inst.hflip()
        if np.random.randint(2) == 0:  # mmdet's AutoAugment picks one of the two policies at random
            inst.resize(self.scales[np.random.randint(len(self.scales))])
        else:
            inst.resize(self.crop_scales[np.random.randint(len(self.crop_scales))])
            inst.random_crop(self.crop_size_range)
            inst.resize(self.scales[np.random.randint(len(self.scales))])
        return inst


class EvalPipeline:
    """The official test pipeline: resize into ``scale`` keeping the ratio, normalise, pad to 32."""

    def __init__(self, scale: Sequence[int] = TEST_SCALE):
        self.scale = tuple(scale)

    def __call__(self, inst: Instances) -> Instances:
        inst.resize(self.scale)
        return inst


# ---------------------------------------------------------------------- the data set
class CocoInstances(Dataset):
    """COCO instances: ``ann_file`` (JSON) and the images under ``image_dir``, through ``pipeline``.

    ``filter_empty``: leave out images without annotations of a known category and images with a side under 32
    pixels (training, as mmdet's ``filter_empty_gt``); a count is logged. ``with_masks=False`` decodes no masks
    (evaluation, which reads the JSON's own).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path,
                 pipeline: Callable[[Instances], Instances] | None = None, filter_empty: bool = False,
                 with_masks: bool = True, substitute_unreadable: bool = False):
        records, self.category_ids, self.classes, self.coco = read_coco(ann_file, image_dir)
        if filter_empty:
            kept = [r for r in records if r.has_known_annotation and min(r.height, r.width) >= MIN_TRAIN_SIZE]
            if len(kept) < len(records):
                _logger.info("%s: training leaves out %d of %d images (no annotation of a known category, or a "
                             "side under %d pixels)", ann_file, len(records) - len(kept), len(records),
                             MIN_TRAIN_SIZE)
            if not kept:
                raise DetectionDataError(f"{ann_file}: no image has a usable annotation to train on")
            records = kept
        self.records, self.pipeline, self.with_masks = records, pipeline or EvalPipeline(), with_masks
        self.substitute_unreadable = substitute_unreadable

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Instances, dict[str, Any]]:
        """The decoded image and its targets in original pixels, with the meta data of the original image."""
        record = self.records[index]
        image = read_image(record.file)
        height, width = image.shape[:2]
        if (height, width) != (record.height, record.width):
            _logger.warning("%s is %dx%d, the JSON says %dx%d; the decoded size is used", record.file, width,
                            height, record.width, record.height)
        try:
            masks = (decode_masks(record.segmentations, height, width) if self.with_masks
                     else np.zeros((0, height, width), dtype=np.uint8))
        except DetectionDataError as exc:
            raise DetectionDataError(f"{record.file}: {exc}") from None
        inst = Instances(image, record.boxes.copy(), record.labels.copy(), masks, record.ignore_boxes.copy())
        return inst, {"image_id": record.image_id, "file": str(record.file), "ori_shape": (height, width, 3)}

    def __getitem__(self, index: int) -> DetectionSample:
        """The sample through the pipeline. With ``substitute_unreadable`` (training), an image that cannot be
        read is replaced by the next readable one, with a warning naming it and a count in ``meta['skipped']``;
        otherwise it is an error."""
        skipped = 0
        while True:
            try:
                inst, meta = self.load((index + skipped) % len(self))
                break
            except DetectionDataError as exc:
                if not self.substitute_unreadable or skipped + 1 >= len(self):
                    raise
                _logger.warning("skipped in training: %s", exc)
                skipped += 1
        sample = to_sample(self.pipeline(inst), meta)
        sample.meta["skipped"] = skipped
        return sample


def collate_detection(samples: list[DetectionSample]) -> tuple[Tensor, list[DetectionSample]]:
    """Images zero-padded to the largest of the batch, stacked; the samples (targets, meta) as a list."""
    height = max(s.image.shape[1] for s in samples)
    width = max(s.image.shape[2] for s in samples)
    images = samples[0].image.new_zeros(len(samples), 3, height, width)
    for i, s in enumerate(samples):
        images[i, :, :s.image.shape[1], :s.image.shape[2]] = s.image
    return images, samples
