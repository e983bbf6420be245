"""The box machinery against hand-worked cases and plain references: anchors, the delta coder, mmcv's batched NMS
(both of its paths), multiclass NMS's strict score threshold, RoI levels, RPN proposal selection, mask pasting."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from overlock.detection import (
    AnchorGenerator,
    DeltaXYWHCoder,
    RPNTestConfig,
    batched_nms,
    map_roi_levels,
    multiclass_nms,
    paste_masks,
    select_proposals,
)


def test_anchors_hand_worked():
    """Stride 4, scale 8: ratio 0.5 (h / w) gives w = 32 / sqrt(0.5), h = 32 * sqrt(0.5), centred on (0, 0); the
    grid cell (y, x) = (0, 1) shifts by (4, 0); order: y, then x, then ratio."""
    anchors = AnchorGenerator()([(2, 3), (1, 1), (1, 1), (1, 1), (1, 1)])
    assert [a.shape for a in anchors] == [(18, 4)] + [(3, 4)] * 4
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    torch.testing.assert_close(anchors[0][0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(anchors[0][1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    torch.testing.assert_close(anchors[0][3], anchors[0][0] + torch.tensor([4.0, 0.0, 4.0, 0.0]))  # x = 1
    torch.testing.assert_close(anchors[0][9], anchors[0][0] + torch.tensor([0.0, 4.0, 0.0, 4.0]))  # y = 1
    torch.testing.assert_close(anchors[4][1], torch.tensor([-256.0, -256.0, 256.0, 256.0]))  # stride 64
    with pytest.raises(ValueError, match="expected 5 feature levels"):
        AnchorGenerator()([(2, 3)])


def test_delta_coder_hand_worked_and_round_trip():
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size (20, 40)
    # dx = 0.5 (x 0.1 = 0.05 of the width: +1), dw = 5 (x 0.2 = 1: width x e)
    out = coder.decode(box, torch.tensor([[0.5, 0.0, 5.0, 0.0]]))
    e = math.e
    torch.testing.assert_close(out, torch.tensor([[21 - 10 * e, 20.0, 21 + 10 * e, 60.0]]))
    # the log-size change is clamped to log(1000 / 16), then the box clipped to (h, w) = (50, 40)
    huge = DeltaXYWHCoder().decode(box, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), max_shape=(50, 40, 3))
    torch.testing.assert_close(huge, torch.tensor([[0.0, 20.0, 40.0, 50.0]]))
    wide = DeltaXYWHCoder().decode(box, torch.tensor([[0.0, 0.0, 100.0, 0.0]]))
    torch.testing.assert_close(wide[0, 2] - wide[0, 0], torch.tensor(20 * 1000 / 16))
    targets = torch.tensor([[12.0, 18.0, 35.0, 70.0], [0.0, 0.0, 5.0, 5.0]])
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [1.0, 1.0, 4.0, 3.0]])
    torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, targets)), targets)
    # several classes' deltas per box: each decoded on the same box
    two = coder.decode(box, torch.tensor([[0.5, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(two, torch.cat([out, box], dim=1))


def _reference_batched_nms(boxes, scores, groups, iou):
    """Per-group torchvision NMS, the union sorted by score."""
    keep = torch.cat([torch.nonzero(groups == g).view(-1)[nms(boxes[groups == g], scores[groups == g], iou)]
                      for g in torch.unique(groups)])
    return keep[scores[keep].argsort(descending=True)]


@pytest.mark.parametrize("split_threshold", [10000, 50])  # one NMS on shifted boxes; per-group NMS
def test_batched_nms_equals_per_group_nms(split_threshold):
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=gen) * 30], dim=1)
    scores = torch.rand(300, generator=gen)
    groups = torch.randint(0, 4, (300,), generator=gen)
    dets, keep = batched_nms(boxes, scores, groups, 0.5, split_threshold=split_threshold)
    assert torch.equal(keep, _reference_batched_nms(boxes, scores, groups, 0.5))
    torch.testing.assert_close(dets, torch.cat([boxes[keep], scores[keep, None]], dim=1))
    assert 0 < len(keep) < 300


def test_nms_threshold_is_strict_and_groups_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(box 0, box 1) = 0.5 exactly: kept at threshold 0.5, dropped below
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 1, 2]  # box 2 is box 0 again, but in another group
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.49)
    assert keep.tolist() == [0]


def test_multiclass_nms_strict_score_threshold_and_order():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0, 50.0, 50.0, 60.0, 60.0],
                          [1.0, 1.0, 11.0, 11.0, 20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.25, 0.35]])  # background last
    dets, labels = multiclass_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_per_img=10)
    # candidates > 0.3: (0, class 0) 0.5, (1, class 0) 0.4 (suppressed: IoU 0.68), (1, class 1) 0.35 (0.3 is not > 0.3)
    assert labels.tolist() == [0]
    torch.testing.assert_close(dets, torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.5]]))
    dets, labels = multiclass_nms(boxes, scores, score_threshold=0.2, iou_threshold=0.5, max_per_img=2)
    assert labels.tolist() == [0, 1] and dets[:, 4].tolist() == pytest.approx([0.5, 0.3])
    empty, labels = multiclass_nms(boxes, scores, score_threshold=0.9, iou_threshold=0.5, max_per_img=10)
    assert empty.shape == (0, 5) and labels.numel() == 0


def test_roi_levels_hand_worked():
    """floor(log2(sqrt(area) / 56 + 1e-6)), clamped to 0-3: 56 -> 0, 111 -> 0, 112 -> 1, 224 -> 2, 448 -> 3."""
    sides = torch.tensor([8.0, 56.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    rois = torch.stack([torch.zeros(8), torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    assert map_roi_levels(rois, 4).tolist() == [0, 0, 0, 1, 2, 2, 3, 3]


def test_proposals_levels_do_not_suppress_each_other_and_small_boxes_go():
    """Two levels of one 1x1 cell with one anchor each, on the same box: both proposals survive NMS (the level is
    the NMS group); a third level's zero-width box is dropped; ``max_per_img`` cuts the score-sorted list."""
    anchors = [torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
               torch.tensor([[10.0, 10.0, 10.0, 30.0]])]
    logits = [torch.full((1, 1, 1), v) for v in (0.0, 2.0, 3.0)]
    deltas = [torch.zeros(4, 1, 1)] * 3
    cfg = RPNTestConfig(nms_pre=1, max_per_img=5, iou_threshold=0.7, min_bbox_size=0)
    proposals = select_proposals(logits, deltas, anchors, (64, 64, 3), cfg)
    torch.testing.assert_close(proposals[:, 4], torch.sigmoid(torch.tensor([2.0, 0.0])))
    torch.testing.assert_close(proposals[:, :4], anchors[0].repeat(2, 1))
    one = select_proposals(logits, deltas, anchors, (64, 64, 3), RPNTestConfig(max_per_img=1))
    assert one.shape == (1, 5)


def test_nms_pre_keeps_the_best_of_a_level():
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]])]
    logits = [torch.tensor([0.1, 0.9, 0.5]).view(3, 1, 1)]  # three anchors on one cell
    proposals = select_proposals(logits, [torch.zeros(12, 1, 1)], anchors, (64, 64, 3), RPNTestConfig(nms_pre=2))
    torch.testing.assert_close(proposals[:, :4], anchors[0][[1, 2]])


def test_pasted_mask_of_a_uniform_probability_is_its_box():
    """A uniform 28x28 mask in the box (10, 10, 20, 20): pixel centres 10.5 ... 19.5 sample inside the mask, centre
    9.5 falls more than a whole mask cell outside (zero padding), so the mask is the box's pixels."""
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    expected = torch.zeros(1, 32, 32, dtype=torch.bool)
    expected[0, 10:20, 10:20] = True
    assert torch.equal(paste_masks(torch.full((1, 28, 28), 0.75), box, 32, 32), expected)
    assert torch.equal(paste_masks(torch.full((1, 28, 28), 0.75), box, 32, 32, threshold=0.7), expected)
    assert not paste_masks(torch.full((1, 28, 28), 0.75), box, 32, 32, threshold=0.8).any()


def test_pasting_a_window_equals_sampling_the_whole_image():
    """mmdet's CPU window (box +- 1 pixel) against grid_sample over every pixel, random masks and boxes, some
    crossing the border."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 28, 28, generator=gen)
    xy = torch.rand(6, 2, generator=gen) * 50 - 5
    boxes = torch.cat([xy, xy + 3 + torch.rand(6, 2, generator=gen) * 30], dim=1)
    height, width = 40, 48
    ys = ((torch.arange(height) + 0.5)[None] - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]) * 2 - 1
    xs = ((torch.arange(width) + 0.5)[None] - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]) * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(6, height, width), ys[:, :, None].expand(6, height, width)], dim=3)
    whole = F.grid_sample(probs[:, None], grid, align_corners=False)[:, 0] >= 0.5
    assert torch.equal(paste_masks(probs, boxes, height, width), whole)
    assert whole.any()
