"""COCO box and mask AP of a detector, as mmdet's ``CocoDataset.evaluate`` computes it (pycocotools' COCOeval).

Detections are turned into COCO results in original-image pixels (boxes ``[x, y, w, h]``, masks as RLE) with
the labels mapped back to the JSON's category ids; the ground truth is the JSON's annotations of the evaluated
images (crowd ones included, as COCOeval treats them).
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torch.utils.data import Dataset

from .data import collate_detection

_logger = logging.getLogger(__name__)

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def coco_results(detections: Sequence[dict[str, Tensor]], image_ids: Sequence[int],
                 category_ids: Sequence[int]) -> tuple[list[dict], list[dict]]:
    """COCO-format (box results, mask results) of per-image detections (``boxes`` (k, 4) x1, y1, x2, y2,
    ``scores``, ``labels`` 0..C-1, optional ``masks`` (k, H, W) bool, all in original pixels)."""
    boxes_out, masks_out = [], []
    for det, image_id in zip(detections, image_ids):
        boxes = det["boxes"].detach().cpu().double().numpy()
        scores = det["scores"].detach().cpu().tolist()
        labels = det["labels"].detach().cpu().tolist()
        masks = det.get("masks")
        masks = None if masks is None else masks.detach().cpu().numpy().astype(np.uint8)
        for k, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes, scores, labels)):
            common = {"image_id": int(image_id), "category_id": int(category_ids[label]), "score": float(score)}
            boxes_out.append(dict(common, bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)]))
            if masks is not None:
                rle = coco_mask.encode(np.asfortranarray(masks[k]))
                rle["counts"] = rle["counts"].decode("ascii")
                masks_out.append(dict(common, segmentation=rle))
    return boxes_out, masks_out


def ground_truth(data: dict, image_ids: Iterable[int]) -> COCO:
    """A pycocotools ``COCO`` of the images ``image_ids`` of a COCO dict, their annotations with ``area`` and
    ``iscrowd`` filled in where missing."""
    keep = {int(i) for i in image_ids}
    annotations = []
    for number, ann in enumerate(data["annotations"]):
        if ann.get("image_id") in keep and ann.get("bbox") is not None:
            w, h = ann["bbox"][2:4]
            annotations.append(dict(ann, id=ann.get("id", number + 1), area=ann.get("area", w * h),
                                    iscrowd=ann.get("iscrowd", 0)))
    gt = COCO()
    gt.dataset = {"images": [im for im in data["images"] if im["id"] in keep], "annotations": annotations,
                      "categories": data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_eval(gt: COCO, results: list[dict], kind: str, image_ids: Sequence[int],
              category_ids: Sequence[int]) -> dict[str, float]:
    """``{kind}_mAP``, ``_mAP_50``, ``_mAP_75``, ``_mAP_s/m/l`` (kind 'bbox' or 'segm'); -1 where COCOeval has no
    ground truth for a number; all 0 without a single detection (which COCOeval cannot load)."""
    if not results:
        return {f"{kind}_{name}": 0.0 for name in STAT_NAMES}
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        detections = gt.loadRes(results)
        evaluator = COCOeval(gt, detections, kind)
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    _logger.debug("COCOeval %s:\n%s", kind, summary.getvalue())
    return {f"{kind}_{name}": float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:6])}


def has_all_masks(gt: COCO) -> bool:
    return all(ann.get("segmentation") for ann in gt.dataset["annotations"])


def evaluate_results(data: dict, detections: Sequence[dict[str, Tensor]], image_ids: Sequence[int],
                     category_ids: Sequence[int], with_masks: bool = True) -> dict[str, float]:
    """Box (and mask) AP of ``detections`` (per image of ``image_ids``) against the COCO dict ``data``."""
    boxes, masks = coco_results(detections, image_ids, category_ids)
    return evaluate_coco_results(data, boxes, masks if with_masks else None, image_ids, category_ids)


def evaluate_coco_results(data: dict, boxes: list[dict], masks: list[dict] | None, image_ids: Sequence[int],
                          category_ids: Sequence[int]) -> dict[str, float]:
    """Box AP of the COCO box results and, unless ``masks`` is None, mask AP of the mask results, over the images
    ``image_ids`` of the COCO dict ``data``."""
    gt = ground_truth(data, image_ids)
    metrics = coco_eval(gt, boxes, "bbox", image_ids, category_ids)
    if masks is not None:
        if has_all_masks(gt):
            metrics.update(coco_eval(gt, masks, "segm", image_ids, category_ids))
        else:
            _logger.warning("mask AP left out: some annotations of the evaluated images have no segmentation")
    return metrics


@torch.no_grad()
def detect_to_coco(model: Any, dataset: Dataset, category_ids: Sequence[int], batch_size: int = 1,
                   device: str | torch.device = "cpu", workers: int = 0, autocast_dtype: torch.dtype | None = None
                   ) -> tuple[list[dict], list[dict], list[int]]:
    """COCO box results, mask results (RLE, made image by image so that full-size masks are never held for the
    whole set) and the image ids of every image of ``dataset`` (a ``CocoInstances`` with its test pipeline, or a
    subset of one)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_detection)
    model.eval()
    boxes, masks, image_ids = [], [], []
    device = torch.device(device)
    for images, samples in loader:
        metas = [s.meta for s in samples]
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            results = model.detect(images.to(device), metas, rescale=True)
        ids = [m["image_id"] for m in metas]
        batch_boxes, batch_masks = coco_results(results, ids, category_ids)
        boxes += batch_boxes
        masks += batch_masks
        image_ids += ids
    return boxes, masks, image_ids
