"""Detection targets and losses (mmdet 2.28 semantics) against cases worked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from overlock.detection.losses import (
    MASK_RCNN_TRAIN,
    AssignSample,
    RoIStage,
    box_head_loss,
    giou_loss,
    mask_head_loss,
    refine_proposals,
    rpn_loss,
)
from overlock.detection.targets import anchor_valid_flags, assign_max_iou, mask_targets, sample_random


def test_max_iou_assignment_thresholds_and_low_quality_matches():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 2.5]])
    # IoUs 1, 0.5, 0, 0.25: positive, ignored (between 0.3 and 0.7), negative, negative
    assert assign_max_iou(boxes, gt, 0.7, 0.3, 0.3, True).tolist() == [1, -1, 0, 0]
    # no box reaches 0.7, the best (0.5 >= min_pos_iou 0.3) is claimed by its gt only with low-quality matching
    boxes = torch.tensor([[0.0, 0, 10, 5], [0, 0, 5, 5]])
    assert assign_max_iou(boxes, gt, 0.7, 0.3, 0.3, True).tolist() == [1, 0]
    assert assign_max_iou(boxes, gt, 0.7, 0.3, 0.3, False).tolist() == [-1, 0]
    assert assign_max_iou(boxes, gt[:0], 0.7, 0.3, 0.3, True).tolist() == [0, 0]


def test_random_sampler_counts_and_gt_as_proposals():
    assigned = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    boxes = torch.rand(len(assigned), 4)
    gt = torch.tensor([[1.0, 2, 3, 4]])
    s = sample_random(boxes, assigned, gt, 16, 0.25, False, torch.Generator().manual_seed(0))
    assert len(s.pos_index) == 4 and len(s.neg_index) == 12
    assert (assigned[s.pos_index] == 1).all() and (assigned[s.neg_index] == 0).all()
    s = sample_random(boxes[10:12], assigned[10:12], gt, 16, 0.25, True)
    assert s.pos_is_gt.tolist() == [True] and len(s.neg_index) == 2
    assert torch.equal(s.boxes[0], gt[0]) and s.pos_gt.tolist() == [0]


def test_rpn_loss_two_anchors_one_gt():
    anchors = [torch.tensor([[0.0, 0, 8, 8], [20, 20, 28, 28]])]  # one 1x1 level, two anchors
    logits = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).requires_grad_()
    deltas = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5, 0.5, 0.5, 0.5]).view(1, 8, 1, 1)
    gt = [torch.tensor([[1.0, 0, 9, 8]])]  # IoU 56/72 with anchor 0 (positive), 0 with anchor 1 (negative)
    losses = rpn_loss([logits], [deltas], anchors, gt, [(32, 32, 3)])
    cls = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2  # BCE(2, 1) + BCE(-1, 0), 2 samples
    box = (abs(0.1 - 1 / 8) + 0.2 + 0.3 + 0.0) / 2  # target deltas (1/8, 0, 0, 0); only the positive counts
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls, rel=1e-6)
    assert losses["loss_rpn_bbox"].item() == pytest.approx(box, rel=1e-6)
    losses["loss_rpn_cls"].backward()
    sig = 1 / (1 + math.exp(-2.0))
    assert logits.grad.flatten()[0].item() == pytest.approx((sig - 1) / 2, rel=1e-6)


def test_anchor_valid_flags_follow_the_padded_image():
    # a 2x3 level of stride 4 for an image padded to 4x8: only cells y < 1, x < 2 are its own
    flags = anchor_valid_flags([(2, 3)], [4], (4, 8, 3), 2).view(2, 3, 2)
    assert flags[0, :2].all() and not flags[0, 2].any() and not flags[1].any()


def test_box_head_loss_one_positive_one_negative():
    stage = RoIStage(AssignSample(0.5, 0.5, 0.5, True, 512, 0.25, True), (0.1, 0.1, 0.2, 0.2))
    gt, labels = [torch.tensor([[0.0, 0, 10, 10]])], [torch.tensor([1])]
    sampled = sample_random(torch.tensor([[40.0, 40, 50, 50]]), torch.tensor([0]), gt[0], 512, 0.25, True)
    rois = torch.cat([torch.zeros(2, 1), sampled.boxes], dim=1)  # the gt (positive) and the far box (negative)
    cls_score = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 2.0]])  # classes 0, 1, background
    bbox_pred = torch.tensor([[9.0, 9, 9, 9, 0.1, -0.2, 0.0, 0.3], [7.0, 7, 7, 7, 7, 7, 7, 7]])
    losses = box_head_loss(cls_score, bbox_pred, rois, [sampled], gt, labels, stage, num_classes=2)
    ce0 = -1.0 + math.log(1 + math.e + 1)  # label 1 of logits (0, 1, 0)
    ce1 = -2.0 + math.log(math.exp(0.5) + 1 + math.exp(2.0))  # background of (0.5, 0, 2)
    assert losses["loss_cls"].item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # the positive is its own gt: target deltas 0; class 1's deltas are columns 4-7; divided by the 2 RoIs
    assert losses["loss_bbox"].item() == pytest.approx((0.1 + 0.2 + 0.0 + 0.3) / 2, rel=1e-6)


def test_giou_loss_by_hand():
    pred, target = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])
    # overlap 1, union 7, hull 9
    assert giou_loss(pred, target).item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)


def test_mask_targets_cut_the_gt_mask_inside_the_box():
    masks = torch.zeros(2, 56, 56, dtype=torch.uint8)
    masks[0, :, :28] = 1  # left half
    masks[1, 10:20, 10:20] = 1
    boxes = torch.tensor([[0.0, 0, 56, 56], [0, 0, 28, 56], [10, 10, 20, 20], [-5, -5, 100, 100]])
    targets = mask_targets(boxes, torch.tensor([0, 0, 1, 0]), masks)
    assert targets.shape == (4, 28, 28)
    assert targets[0, :, :14].all() and not targets[0, :, 14:].any()
    assert targets[1].all()
    # 10 px cut into 28 bins: the outer samples sit 0.32 px outside the square (bilinear weight 0.68 inside, so 1),
    # but at the corners 0.68^2 = 0.46 < 0.5
    corners = torch.zeros(28, 28, dtype=torch.bool)
    corners[0, 0] = corners[0, -1] = corners[-1, 0] = corners[-1, -1] = True
    assert torch.equal(targets[2].bool(), ~corners)
    # the last box is clipped to the 56x56 mask first: as the first
    assert torch.equal(targets[3], targets[0])


def test_mask_loss_takes_the_label_channel():
    masks = torch.zeros(1, 28, 28, dtype=torch.uint8)
    masks[0, :, :14] = 1
    sampled = sample_random(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.tensor([[0.0, 0, 28, 28]]),
                            512, 0.25, True)
    logits = torch.zeros(1, 3, 28, 28)
    logits[0, 2] = 3.0  # class 2 predicts 3 everywhere; the other channels must not matter
    logits[0, 0] = -50.0
    loss = mask_head_loss(logits, [sampled], [masks], [torch.tensor([2])])
    expected = (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(3.0))) / 2  # half ones, half zeros
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mask_rcnn_training_settings_are_the_official_ones():
    assert MASK_RCNN_TRAIN.rpn == AssignSample(0.7, 0.3, 0.3, True, 256, 0.5, False)
    (stage,) = MASK_RCNN_TRAIN.stages
    assert stage.assign == AssignSample(0.5, 0.5, 0.5, True, 512, 0.25, True) and stage.stds == (0.1, 0.1, 0.2, 0.2)
    assert (MASK_RCNN_TRAIN.proposal_nms_pre, MASK_RCNN_TRAIN.proposal_max_per_img) == (2000, 1000)


def test_cascade_refinement_moves_rois_and_drops_gt_proposals():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    proposals = torch.tensor([[1.0, 0, 11, 10], [30, 30, 40, 40]])  # IoU 9/11 with the gt (positive), 0
    sampled = sample_random(proposals, torch.tensor([1, 0]), gt, 512, 0.25, True)
    assert sampled.pos_is_gt.tolist() == [True, False]
    rois = torch.cat([torch.zeros(3, 1), sampled.boxes], dim=1)  # gt, positive proposal, negative
    deltas = torch.tensor([[5.0, 5, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 10]])
    (refined,) = refine_proposals(rois, deltas, [sampled], (0.1, 0.1, 0.2, 0.2), [(36, 100, 3)])
    # the gt is left out; dx 1 x std 0.1 moves the 10-px box by 1 px; dh 10 x 0.2 = 2 -> height 10 e^2, clipped to 36
    expected = torch.tensor([[2.0, 0, 12, 10], [30, 35 - 5 * math.exp(2.0), 40, 36]])
    expected[1, 1] = expected[1, 1].clamp(min=0)
    torch.testing.assert_close(refined, expected)
