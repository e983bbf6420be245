"""COCO instance data: parsing, label mapping, masks, bad data, and the official pipelines' sizes."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from overlock.data.image_io import fit_size
from overlock.detection.data import (
    CocoInstances,
    DetectionDataError,
    EvalPipeline,
    TrainPipeline1x,
    TrainPipeline3x,
    collate_detection,
    read_coco,
)


def _write(tmp_path, annotations, images=None, categories=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
                        {"id": 2, "file_name": "b.png", "height": 50, "width": 50},
                        {"id": 3, "file_name": "c.png", "height": 40, "width": 40}]
    for im in images:
        pixels = np.full((im["height"], im["width"], 3), (10, 20, 30), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "img" / im["file_name"]), pixels)
    categories = categories or [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 90, "name": "ninety"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, tmp_path / "img"


def _square(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_coco_parsing_labels_masks_crowd_and_skips(tmp_path, caplog):
    rle = coco_mask.encode(np.asfortranarray(np.pad(np.ones((10, 10), np.uint8), ((5, 25), (20, 30)))))
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 90, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": _square(10, 5, 20, 10)},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 0, "segmentation": rle},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1, "segmentation": rle},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [100, 100, 5, 5], "area": 25, "iscrowd": 0, "segmentation": []},
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0, 4], "area": 0, "iscrowd": 0, "segmentation": []},
        {"id": 8, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0.5, 4], "area": 2, "iscrowd": 0, "segmentation": []},
        {"id": 6, "image_id": 2, "category_id": 55, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0, "segmentation": []},
        {"id": 7, "image_id": 99, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0, "segmentation": []},
    ]
    path, images = _write(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        records, ids, names, _ = read_coco(path, images)
    assert ids == [2, 7, 90] and names == ["two", "seven", "ninety"]  # labels follow the sorted ids
    text = caplog.text
    for reason in ("2 boxes with no area inside their image", "1 boxes of zero area", "1 annotations of unknown category ids",
                   "1 annotations of unknown image ids"):
        assert reason in text
    first = records[0]
    assert first.boxes.tolist() == [[10, 5, 30, 15], [20, 5, 30, 15]] and first.labels.tolist() == [2, 0]
    assert first.ignore_boxes.tolist() == [[0, 0, 30, 30]]
    ds = CocoInstances(path, images, pipeline=lambda inst: inst)
    inst, meta = ds.load(0)
    assert inst.masks.shape == (2, 40, 60) and meta["ori_shape"] == (40, 60, 3)
    assert inst.masks[0].sum() == 200 and inst.masks[0][5:15, 10:30].all()  # polygon of the 20x10 box
    assert inst.masks[1].sum() == 100 and inst.masks[1][5:15, 20:30].all()  # RLE
    np.testing.assert_array_equal(inst.image[0, 0], [30, 20, 10])
    ds.records[0].segmentations[1] = dict(rle, size=[50, 50])
    with pytest.raises(DetectionDataError, match="a.png: mask 1 is an RLE of size \\[50, 50\\], the image 40x60"):
        ds.load(0)  # written BGR (10, 20, 30), read as RGB
    # training: image 3 has no annotation, image 2 only unusable ones (kept, as mmdet keeps it); image 3 left out
    assert [r.image_id for r in CocoInstances(path, images, filter_empty=True).records] == [1, 2]


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ("[1, 2]", "top level is not an object"),
    ('{"images": [], "annotations": []}', "no 'categories' list"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
     "category id 1 is defined more than once"),
])
def test_not_coco_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "img").mkdir()
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(DetectionDataError, match=message):
        read_coco(path, tmp_path / "img")


def test_missing_and_unreadable_images(tmp_path, caplog):
    path, images = _write(tmp_path, [])
    (images / "b.png").unlink()
    with caplog.at_level(logging.WARNING):
        records, _, _, _ = read_coco(path, images)
    assert len(records) == 2 and "left out 1 images whose files are missing" in caplog.text
    (images / "a.png").write_bytes(b"not a picture")
    with pytest.raises(DetectionDataError, match="cannot decode image .*a.png"):
        CocoInstances(path, images)[0]
    with caplog.at_level(logging.WARNING):  # training: the next readable image takes its place, counted
        sample = CocoInstances(path, images, substitute_unreadable=True)[0]
    assert sample.meta["file"].endswith("c.png") and sample.meta["skipped"] == 1
    assert "skipped in training: cannot decode image" in caplog.text
    with pytest.raises(DetectionDataError, match="no image has a usable annotation"):
        CocoInstances(path, images, filter_empty=True)
    for im in ("a.png", "c.png"):
        (images / im).unlink()
    with pytest.raises(DetectionDataError, match="none of the 3 images"):
        read_coco(path, images)


def test_test_pipeline_sizes_and_meta(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
                 "segmentation": _square(10, 5, 20, 10)}]
    path, images = _write(tmp_path, anns)
    sample = CocoInstances(path, images, pipeline=EvalPipeline())[0]
    # 60x40 into (1333, 800): factor min(1333/60, 800/40) = 20 -> 1200x800, padded to 1216x800
    assert sample.meta["img_shape"] == (800, 1200, 3) and sample.meta["pad_shape"] == (800, 1216, 3)
    assert sample.image.shape == (3, 800, 1216) and sample.image[:, :, 1200:].abs().sum() == 0
    np.testing.assert_allclose(sample.meta["scale_factor"], [20, 20, 20, 20])
    assert sample.boxes.tolist() == [[200, 100, 600, 300]]
    expected = (torch.tensor([30.0, 20, 10]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375])
    torch.testing.assert_close(sample.image[:, 0, 0], expected)
    assert fit_size(427, 640, (1333, 800)) == (800, 1199)  # int(640 * 800/427 + 0.5)


def test_train_pipelines_flip_crop_and_collate(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
                 "segmentation": _square(10, 5, 20, 10)}]
    path, images = _write(tmp_path, anns)
    ds = CocoInstances(path, images, pipeline=TrainPipeline1x(scale=(120, 80), flip_prob=1.0), filter_empty=True)
    sample = ds[0]
    # 60x40 -> 120x80, flipped: box x 20..60 -> 60..100
    assert sample.meta["flip"] and sample.boxes.tolist() == [[60, 10, 100, 30]]
    assert sample.masks.shape == (1, 96, 128) and sample.masks[0].sum() == 800 and sample.masks[0, 10:30, 60:100].all()
    np.random.seed(3)
    crop = TrainPipeline3x(scales=[(96, 200)], crop_scales=[(60, 200)], crop_size_range=(30, 40), flip_prob=0.0)
    for _ in range(10):
        s = CocoInstances(path, images, pipeline=crop, filter_empty=True)[0]
        h, w = s.meta["img_shape"][:2]
        assert min(h, w) == 96 or max(h, w) == 200
        assert len(s.boxes) == len(s.labels) == len(s.masks)
        if len(s.boxes):
            assert (s.boxes[:, 2] <= w).all() and (s.boxes[:, 3] <= h).all()
    batch, samples = collate_detection([ds[0], CocoInstances(path, images, pipeline=EvalPipeline((64, 32)))[1]])
    assert batch.shape == (2, 3, 96, 128) and len(samples) == 2


def test_generated_shapes_as_coco_instances(tmp_path):
    from PIL import Image

    from overlock.data.shapes import write_shapes_dataset

    write_shapes_dataset(tmp_path, train=6, val=2, size=64, seed=1)
    ds = CocoInstances(tmp_path / "annotations" / "instances_train.json", tmp_path / "images" / "train",
                       pipeline=lambda inst: inst)
    assert ds.classes == ["disc", "square", "triangle"] and len(ds) == 6
    for index in range(len(ds)):
        inst, _ = ds.load(index)
        classes = np.asarray(Image.open(tmp_path / "masks" / "train" / f"{index:05d}.png"))
        assert 1 <= len(inst.labels) <= 2
        for box, label, mask in zip(inst.boxes, inst.labels, inst.masks):
            x1, y1, x2, y2 = box.astype(int)
            exact = np.zeros_like(classes, dtype=bool)  # this shape's pixels (two shapes may share a class)
            exact[y1:y2, x1:x2] = classes[y1:y2, x1:x2] == label + 1
            rows, cols = np.nonzero(exact)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]  # tight boxes
            overlap = (exact & (mask > 0)).sum() / (exact | (mask > 0)).sum()
            assert overlap == 1.0 if label == 0 else overlap > 0.9  # discs as RLE (exact), others as polygons
