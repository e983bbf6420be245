"""``overlock det validate`` and ``det predict`` on a small run checkpoint and generated shapes; bad input in one
line."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from overlock.cli.main import main
from overlock.data.shapes import write_shapes_dataset
from overlock.detection.inference import load_detector
from overlock.detection.presets import build_detector, det_preset


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_cli")
    write_shapes_dataset(root / "data", train=2, val=3, size=64, seed=0)
    cfg = det_preset("shapes")
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    checkpoint = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "classes": ["disc", "square", "triangle"],
                      "category_ids": [1, 2, 3]}
    torch.save(checkpoint, root / "best.pth")
    return root


def test_run_checkpoint_loads_with_its_classes(shapes_run):
    loaded = load_detector(shapes_run / "best.pth")
    assert loaded.classes == ["disc", "square", "triangle"] and loaded.category_ids == [1, 2, 3]
    assert loaded.test_scale == (64, 64) and loaded.model.num_classes == 3


def test_validate_prints_box_and_mask_ap(shapes_run, capsys):
    out = shapes_run / "metrics.json"
    assert main(["det", "validate", "--checkpoint", str(shapes_run / "best.pth"), "--data-dir",
                 str(shapes_run / "data"), "--workers", "0", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_l", "segm_mAP", "segm_mAP_75"} <= set(metrics)
    assert "(3 images;" in capsys.readouterr().out


def test_predict_writes_pictures_and_coco_json(shapes_run, capsys):
    images = [shapes_run / "data" / "images" / "val" / f"0000{i}.png" for i in range(2)]
    out = shapes_run / "pred"
    assert main(["det", "predict", *map(str, images), "--checkpoint", str(shapes_run / "best.pth"),
                 "--out", str(out), "--score-threshold", "0"]) == 0
    assert (out / "00000.png").is_file() and (out / "00001.png").is_file()
    detections = json.loads((out / "detections.json").read_text())
    assert detections, "an untrained detector still returns its top-scoring boxes"
    first = detections[0]
    assert first["category"] == ["disc", "square", "triangle"][first["category_id"] - 1]
    assert len(first["bbox"]) == 4 and "counts" in first["segmentation"]


@pytest.mark.parametrize("args, message", [
    (["predict", "missing.png", "--checkpoint", "x.pth"], "image not found: missing.png"),
    (["validate", "--checkpoint", "nothing.pth", "--data-dir", "."], "nothing.pth"),
    (["train", "--data-dir", "no/such/folder", "--preset", "shapes"], "data folder not found: no/such/folder"),
])
def test_bad_input_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["det", *args])
    text = str(exc.value)
    assert message in text and "\n" not in text and "Traceback" not in text


@pytest.mark.slow
def test_official_checkpoint_is_recognised_from_its_keys(tmp_path):
    from overlock.detection import create_maskrcnn
    from overlock.detection.inference import COCO_CATEGORY_IDS, COCO_CLASSES

    path = tmp_path / "mask_rcnn_overlock_t_in1k_fpn_1x_coco.pth"
    torch.save({"state_dict": create_maskrcnn("t", 80).state_dict(), "meta": {"epoch": 12}}, path)
    loaded = load_detector(path)
    assert loaded.description == "official Mask R-CNN checkpoint" and loaded.test_scale == (1333, 800)
    assert loaded.classes == list(COCO_CLASSES) and loaded.category_ids[-1] == COCO_CATEGORY_IDS[-1] == 90
