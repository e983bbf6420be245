"""Mask R-CNN and Cascade Mask R-CNN against mmdetection 2.28's own outputs (../shared/fixtures/
official_maskrcnn_tiny.pt: a tiny OverLoCK config, random weights, every test-time limit biting): backbone, FPN,
anchors, RPN, proposals, RoI levels, box and mask heads, detections and pasted masks, per cascade stage too."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SHARED, rel_err

from overlock.detection import RCNNTestConfig, boxes_to_rois, detector_from_mmdet_config, load_detector_weights
from overlock.detection.roi_heads import group_by_class

FIXTURE = SHARED / "fixtures" / "official_maskrcnn_tiny.pt"
TOLERANCE = 1e-5  # relative to the largest magnitude of the official output
BOX_TOLERANCE = 1e-4  # relative to the largest coordinate, for boxes that went through the whole chain


def assert_boxes_close(actual: torch.Tensor, expected: torch.Tensor, scored: bool = False) -> None:
    """Same shape (count) and order; coordinates within ``BOX_TOLERANCE`` of the largest one; with ``scored``, the
    last column is a score, compared to 1e-5."""
    assert actual.shape == expected.shape
    if expected.numel() == 0:
        return
    if scored:
        torch.testing.assert_close(actual[:, -1], expected[:, -1], rtol=0, atol=1e-5)
        actual, expected = actual[:, :-1], expected[:, :-1]
    assert rel_err(actual, expected) < BOX_TOLERANCE


def _load(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"official reference data not found at {path} (it lives in ../shared beside the repo)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def fixture() -> dict:
    return _load(FIXTURE)


def _build(record: dict) -> torch.nn.Module:
    """The detector of the record's mmdet config (another seed than the fixture's), its weights loaded strictly."""
    torch.manual_seed(1)
    model = detector_from_mmdet_config(dict(record["config"], test_cfg=record["test_cfg"])).eval()
    return load_detector_weights(model, record["state_dict"])


def _run(model: torch.nn.Module, inputs: dict, features: list | None = None) -> dict:
    """Every intermediate output, computed once; ``features``: backbone outputs already computed with the same
    backbone weights (the backbone is the slow part on the CPU)."""
    images, metas = inputs["img"], inputs["img_metas"]
    out: dict = dict(model=model, state_keys=list(model.state_dict()))
    with torch.no_grad():
        out["backbone"] = features if features is not None else model.backbone(images)
        feats = out["fpn"] = model.neck(out["backbone"])
        out["anchors"] = model.anchors(feats)
        out["rpn_cls"], out["rpn_reg"] = model.rpn_head(feats)
        out["proposals"] = model.proposals(out["rpn_cls"], out["rpn_reg"], out["anchors"], metas)
        out["results"] = model.simple_test(images, metas, rescale=True)
        # what ``detect`` returns, from the features above
        out["flat"] = model.roi_head.simple_test(feats[:4], out["proposals"], metas, model.test_cfg.rcnn)
    return out


@pytest.fixture(scope="module")
def maskrcnn(fixture) -> dict:
    return _run(_build(fixture), fixture["inputs"])


@pytest.fixture(scope="module")
def cascade(fixture, maskrcnn) -> dict:
    """The Cascade record shares the Mask R-CNN's backbone tensors (checked), so its backbone outputs are reused."""
    model = _build(fixture["cascade"])
    shared = {k: v for k, v in fixture["state_dict"].items() if k.startswith("backbone.")}
    assert all(torch.equal(fixture["cascade"]["state_dict"][k], v) for k, v in shared.items())
    return _run(model, fixture["inputs"], maskrcnn["backbone"])


@pytest.fixture(params=["maskrcnn", "cascade"])
def case(request, fixture) -> tuple[dict, dict]:
    """(ours, official) for either detector."""
    record = fixture if request.param == "maskrcnn" else fixture["cascade"]
    return request.getfixturevalue(request.param), record


def test_state_dict_keys_in_official_order(case):
    ours, record = case
    assert ours["state_keys"] == list(record["state_dict"])


def test_backbone_fpn_anchors_rpn(case):
    ours, record = case
    for name, key in [("backbone", "backbone_features"), ("fpn", "fpn_features"), ("rpn_cls", "rpn_cls_scores"),
                      ("rpn_reg", "rpn_bbox_preds")]:
        assert len(ours[name]) == len(record[key])
        for level, (a, e) in enumerate(zip(ours[name], record[key])):
            assert a.shape == e.shape, (name, level)
            assert rel_err(a, e) < TOLERANCE, (name, level)
    for a, e in zip(ours["anchors"], record["anchors"], strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_proposals_count_order_and_values(case):
    ours, record = case
    for a, e in zip(ours["proposals"], record["proposals"], strict=True):
        assert a.shape == e.shape
        assert_boxes_close(a, e, scored=True)


def _assert_results(ours: list, expected: list, num_classes: int) -> None:
    """Per image and class: the same boxes in the same order, and masks equal on >= 99.9 % of pixels."""
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected):
        assert len(got["boxes"]) == len(want["boxes"]) == num_classes
        for boxes, want_boxes in zip(got["boxes"], want["boxes"]):
            assert boxes.shape == want_boxes.shape
            assert_boxes_close(boxes, want_boxes, scored=True)
        for masks, want_masks in zip(got["masks"], want["masks"]):
            assert masks.dtype == torch.bool and masks.shape == want_masks.shape
            if masks.numel():
                assert (masks != want_masks).float().mean().item() <= 1e-3


def test_final_results(case):
    ours, record = case
    num_classes = record["config"]["roi_head"]["mask_head"]["num_classes"]
    _assert_results(ours["results"], record["results"], num_classes)
    differing = sum((m != w).sum().item() for r, e in zip(ours["results"], record["results"])
                    for m, w in zip(r["masks"], e["masks"]))
    assert differing == 0  # exact on this fixture


def test_flat_detections_match_the_per_class_results(case):
    ours, _ = case
    for flat, grouped in zip(ours["flat"], ours["results"]):
        assert flat["scores"].shape[0] == flat["boxes"].shape[0] == flat["labels"].shape[0] == flat["masks"].shape[0]
        assert torch.all(flat["scores"][:-1] >= flat["scores"][1:])  # score order
        for c, (boxes, masks) in enumerate(zip(grouped["boxes"], grouped["masks"])):
            chosen = flat["labels"] == c
            torch.testing.assert_close(boxes[:, :4], flat["boxes"][chosen])
            assert torch.equal(masks, flat["masks"][chosen])


# ---------------------------------------------------------------------------------------------- Mask R-CNN
def test_rois_levels_and_box_head(fixture, maskrcnn):
    model, feats = maskrcnn["model"], maskrcnn["fpn"]
    rois = boxes_to_rois(maskrcnn["proposals"])
    assert_boxes_close(rois, fixture["bbox_rois"])
    assert torch.equal(model.roi_head.bbox_roi_extractor.roi_levels(rois), fixture["roi_levels"])
    with torch.no_grad():
        cls_score, bbox_pred = model.roi_head.bbox_forward(feats, rois)
    assert rel_err(cls_score, fixture["cls_score"]) < TOLERANCE
    assert rel_err(bbox_pred, fixture["bbox_pred"]) < TOLERANCE


def test_heads_on_given_rois(fixture, maskrcnn):
    """Chosen RoIs reaching every FPN level, many crossing the border."""
    model, feats, rois = maskrcnn["model"], maskrcnn["fpn"], fixture["given_rois"]
    assert torch.equal(model.roi_head.bbox_roi_extractor.roi_levels(rois), fixture["given_roi_levels"])
    assert set(fixture["given_roi_levels"].tolist()) == {0, 1, 2, 3}
    with torch.no_grad():
        cls_score, bbox_pred = model.roi_head.bbox_forward(feats, rois)
        mask_logits = model.roi_head.mask_forward(feats, rois)
    assert rel_err(cls_score, fixture["given_cls_score"]) < TOLERANCE
    assert rel_err(bbox_pred, fixture["given_bbox_pred"]) < TOLERANCE
    assert rel_err(mask_logits, fixture["given_mask_logits"]) < TOLERANCE


def test_detections_mask_rois_and_mask_logits(fixture, maskrcnn):
    model, feats, metas = maskrcnn["model"], maskrcnn["fpn"], fixture["inputs"]["img_metas"]
    with torch.no_grad():
        dets, labels = model.roi_head.detect_boxes(feats, maskrcnn["proposals"], metas, model.test_cfg.rcnn)
        for det, label, want, want_labels in zip(dets, labels, fixture["det_bboxes"], fixture["det_labels"],
                                                 strict=True):
            assert det.shape == want.shape and torch.equal(label, want_labels)
            assert_boxes_close(det, want, scored=True)
        mask_rois = model.roi_head.mask_rois([d[:, :4] for d in dets], metas, rescale=True)
        assert_boxes_close(mask_rois, fixture["mask_rois"])
        assert rel_err(model.roi_head.mask_forward(feats, fixture["mask_rois"]), fixture["mask_logits"]) < TOLERANCE
    # score_thr bites on both images: fewer detections than max_per_img
    assert [len(d) for d in dets] == [21, 18]


# ---------------------------------------------------------------------------------------------- Cascade
def test_cascade_stages(fixture, cascade):
    """Each stage's RoIs (the previous stage's refinement), their levels, and the stage's box and mask heads."""
    record, model, feats = fixture["cascade"], cascade["model"], cascade["fpn"]
    with torch.no_grad():
        stages = model.roi_head.cascade(feats, boxes_to_rois(cascade["proposals"]), fixture["inputs"]["img_metas"])
        assert len(stages) == 3
        for stage, (rois, cls_score, bbox_pred) in enumerate(stages):
            assert_boxes_close(rois, record["bbox_rois"][stage])
            levels = model.roi_head.bbox_roi_extractor.roi_levels(rois)
            assert torch.equal(levels, record["roi_levels"][stage])
            assert rel_err(cls_score, record["cls_score"][stage]) < TOLERANCE
            assert rel_err(bbox_pred, record["bbox_pred"][stage]) < TOLERANCE
            given_cls, given_reg = model.roi_head.bbox_forward(feats, record["given_rois"], stage)
            assert rel_err(given_cls, record["given_cls_score"][stage]) < TOLERANCE
            assert rel_err(given_reg, record["given_bbox_pred"][stage]) < TOLERANCE
            mask_logits = model.roi_head.mask_forward(feats, record["mask_rois"], stage)
            assert rel_err(mask_logits, record["mask_logits"][stage]) < TOLERANCE


def test_cascade_mask_rois_and_limits(fixture, cascade):
    record, model = fixture["cascade"], cascade["model"]
    flat = cascade["flat"]
    mask_rois = model.roi_head.mask_rois([r["boxes"] for r in flat], fixture["inputs"]["img_metas"], rescale=True)
    assert_boxes_close(mask_rois, record["mask_rois"])
    assert [len(r["scores"]) for r in flat] == [25, 25]  # max_per_img bites on both images


def test_no_detections_gives_empty_results(fixture, case):
    """Nothing above the score threshold: every class empty, masks (0, H, W) at the original size."""
    ours, _ = case
    model, metas = ours["model"], fixture["inputs"]["img_metas"]
    cfg = RCNNTestConfig(score_thr=1.0)
    with torch.no_grad():
        results = model.roi_head.simple_test(ours["fpn"], ours["proposals"], metas, cfg)
    for result, meta in zip(results, metas, strict=True):
        assert result["boxes"].shape == (0, 4) and result["labels"].numel() == 0
        assert result["masks"].shape == (0, *meta["ori_shape"][:2])
        grouped = group_by_class(result["boxes"], result["scores"], result["labels"], result["masks"], 3)
        assert [b.shape for b in grouped["boxes"]] == [(0, 5)] * 3


def test_without_rescale_boxes_stay_in_input_pixels(fixture, case):
    """``rescale=False``: boxes in input pixels (the rescaled ones times scale_factor, here where NMS in either unit
    keeps the same boxes), masks at ``img_shape``."""
    ours, _ = case
    model, metas = ours["model"], fixture["inputs"]["img_metas"]
    with torch.no_grad():
        results = model.roi_head.simple_test(ours["fpn"], ours["proposals"], metas, model.test_cfg.rcnn, rescale=False)
    for result, rescaled, meta in zip(results, ours["flat"], metas, strict=True):
        assert torch.equal(result["labels"], rescaled["labels"])
        scale = torch.tensor(meta["scale_factor"], dtype=torch.float32)
        torch.testing.assert_close(result["boxes"], rescaled["boxes"] * scale, rtol=0, atol=1e-3)
        assert result["masks"].shape[1:] == tuple(meta["img_shape"][:2])
