"""COCO evaluation of detections: coordinates, category ids and masks reach COCOeval as they should."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from overlock.detection.evaluate import coco_results, evaluate_results


def _coco():
    images = [{"id": 10, "file_name": "a.png", "height": 40, "width": 60}, {"id": 20, "file_name": "b.png", "height": 40, "width": 60}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 9, "bbox": [10, 10, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 20, "category_id": 3, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0,
             "segmentation": [[0, 0, 40, 0, 40, 40, 0, 40]]},
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "c"}, {"id": 9, "name": "n"}]}


def _detection(boxes, labels, masks):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.full((len(boxes),), 0.9),
                "labels": torch.tensor(labels), "masks": torch.from_numpy(np.stack(masks))}


def _box_mask(x1, y1, x2, y2):
    mask = np.zeros((40, 60), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_results_are_xywh_with_the_json_category_ids():
    boxes, masks = coco_results([_detection([[10, 10, 30, 20]], [1], [_box_mask(10, 10, 30, 20)])], [10], [3, 9])
    assert boxes == [{"image_id": 10, "category_id": 9, "score": pytest.approx(0.9), "bbox": [10.0, 10.0, 20.0, 10.0]}]
    assert masks[0]["category_id"] == 9 and isinstance(masks[0]["segmentation"]["counts"], str)


def test_perfect_and_shifted_detections():
    data = _coco()
    perfect = [_detection([[10, 10, 30, 20]], [1], [_box_mask(10, 10, 30, 20)]),
               _detection([[0, 0, 40, 40]], [0], [_box_mask(0, 0, 40, 40)])]
    metrics = evaluate_results(data, perfect, [10, 20], [3, 9])
    assert metrics["bbox_mAP"] == pytest.approx(1.0) and metrics["segm_mAP"] == pytest.approx(1.0)
    # image 20's box shifted by 10 px: IoU 30*40 / (2*1600 - 1200) = 0.6, a hit at IoU 0.5, a miss from 0.65 up
    shifted = [perfect[0], _detection([[10, 0, 50, 40]], [0], [_box_mask(10, 0, 50, 40)])]
    metrics = evaluate_results(data, shifted, [10, 20], [3, 9])
    assert metrics["bbox_mAP_50"] == pytest.approx(1.0)
    assert metrics["bbox_mAP_75"] == pytest.approx(0.5)  # category 9 still perfect, category 3 missed
    # thresholds 0.5 and 0.55 and 0.6 hit for category 3 (IoU exactly 0.6 counts), 7 of 10 miss
    assert metrics["bbox_mAP"] == pytest.approx((1.0 + 3 / 10) / 2, abs=1e-3)
    # image 10's box under the wrong category (scored below the right one): category 9 gets AP 0, category 3
    # a false positive after its hit (AP 1)
    wrong = [dict(_detection([[10, 10, 30, 20]], [0], [_box_mask(10, 10, 30, 20)]), scores=torch.tensor([0.5])),
             perfect[1]]
    assert evaluate_results(data, wrong, [10, 20], [3, 9])["bbox_mAP"] == pytest.approx(0.5)


def test_no_detections_score_zero():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                 "masks": torch.zeros(0, 40, 60, dtype=torch.bool)}
    metrics = evaluate_results(_coco(), [empty, empty], [10, 20], [3, 9])
    assert metrics["bbox_mAP"] == 0.0 and metrics["segm_mAP_50"] == 0.0
