"""Training losses of Mask R-CNN and Cascade Mask R-CNN as mmdetection 2.28 computes them.

RPN (``AnchorHead.loss``): per image, anchors on the image's own padded area are assigned (0.7 / 0.3, low-quality
matches from 0.3) and 256 sampled (half positive at most); the objectness loss is the sigmoid cross-entropy of
the sampled anchors and the box loss the L1 (Cascade: smooth L1, beta 1/9) of the positives' deltas, both summed
and divided by the number of sampled anchors of the batch.

RoI heads (``StandardRoIHead`` / ``CascadeRoIHead``): per image, the proposals plus the gt boxes are assigned
(0.5; Cascade 0.5 / 0.6 / 0.7 without low-quality matches) and 512 sampled (a quarter positive at most); the
classification loss is the softmax cross-entropy over C + 1 classes (background last) averaged over the
sampled RoIs; the box loss the L1 of the positives' class-specific deltas (stds 0.1, 0.1, 0.2, 0.2), summed and
divided by the number of sampled RoIs (Cascade: GIoU of the decoded boxes, weight 10); the mask loss the binary
cross-entropy of each positive's own-class 28 x 28 logits against its ``mask_targets``, averaged over pixels.
Cascade weighs its stages 1, 0.5, 0.25 and feeds each stage the previous stage's boxes (gt boxes left out).
Crowd boxes take no part: the official configs assign with ``ignore_iof_thr=-1``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import AnchorGenerator, DeltaXYWHCoder
from .roi_heads import BOX_STDS, CASCADE_STDS
from .rpn import RPNTestConfig
from .targets import anchor_valid_flags, assign_max_iou, mask_targets, sample_random

RPN_CODER = DeltaXYWHCoder()


@dataclass(frozen=True)
class AssignSample:
    """One assigner + sampler setting (mmdet's ``MaxIoUAssigner`` and ``RandomSampler``)."""

    pos_iou: float
    neg_iou: float
    min_pos_iou: float
    match_low_quality: bool
    num: int
    pos_fraction: float
    add_gt_as_proposals: bool


@dataclass(frozen=True)
class RoIStage:
    """Training settings of one RoI head stage."""

    assign: AssignSample
    stds: tuple[float, float, float, float]
    weight: float = 1.0
    box_loss: str = "l1"  # 'l1' on deltas, or 'giou' on decoded boxes (weight ``box_loss_weight``)
    box_loss_weight: float = 1.0


RPN_ASSIGN = AssignSample(0.7, 0.3, 0.3, True, 256, 0.5, False)


@dataclass(frozen=True)
class DetectorTrainCfg:
    """mmdet's ``train_cfg`` of a two-stage detector, as the official configs set it."""

    rpn: AssignSample = RPN_ASSIGN
    rpn_box_loss: str = "l1"  # 'l1', or 'smooth_l1' (beta 1/9)
    proposal_nms_pre: int = 2000
    proposal_max_per_img: int = 1000
    proposal_nms_iou: float = 0.7
    stages: tuple[RoIStage, ...] = (RoIStage(AssignSample(0.5, 0.5, 0.5, True, 512, 0.25, True), BOX_STDS),)
    mask_size: int = 28


MASK_RCNN_TRAIN = DetectorTrainCfg()
CASCADE_TRAIN = DetectorTrainCfg(
    rpn_box_loss="smooth_l1", proposal_max_per_img=2000,
    stages=tuple(RoIStage(AssignSample(iou, iou, iou, False, 512, 0.25, True), stds, weight, "giou", 10.0)
                 for iou, stds, weight in zip((0.5, 0.6, 0.7), CASCADE_STDS, (1.0, 0.5, 0.25))),
)


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise smooth L1 (mmdet's form: 0.5 d^2 / beta below beta, d - beta / 2 above)."""
    diff = (pred - target).abs()
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """(N,) 1 - GIoU of aligned boxes (mmdet's ``bbox_overlaps(mode='giou')``: union and hull area at least eps)."""
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    overlap = (rb - lt).clamp(min=0).prod(dim=1)
    area_pred = (pred[:, 2:] - pred[:, :2]).prod(dim=1)
    area_target = (target[:, 2:] - target[:, :2]).prod(dim=1)
    union = (area_pred + area_target - overlap).clamp(min=eps)
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0).prod(dim=1)
    hull = hull.clamp(min=eps)
    return 1 - (overlap / union - (hull - union) / hull)


# ---------------------------------------------------------------------- RPN
def rpn_loss(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], anchors: Sequence[Tensor],
             gt_boxes: Sequence[Tensor], pad_shapes: Sequence[Sequence[int]], cfg: DetectorTrainCfg = MASK_RCNN_TRAIN,
             generator: torch.Generator | None = None, strides: Sequence[int] = AnchorGenerator.strides
             ) -> dict[str, Tensor]:
    """``loss_rpn_cls`` and ``loss_rpn_bbox`` of a batch. ``cls_scores`` per level (B, A, H, W) logits,
    ``bbox_preds`` per level (B, 4A, H, W) (channel 4a + k), ``anchors`` per level (H W A, 4) in (y, x, a) order,
    ``strides`` the levels' anchor strides."""
    num_anchors = cls_scores[0].shape[1]
    batch = cls_scores[0].shape[0]
    logits = torch.cat([s.permute(0, 2, 3, 1).reshape(batch, -1) for s in cls_scores], dim=1)
    deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_preds], dim=1)
    all_anchors = torch.cat(list(anchors))
    level_sizes = [tuple(s.shape[-2:]) for s in cls_scores]
    chosen_logits, chosen_labels, pos_deltas, pos_targets = [], [], [], []
    for i in range(batch):
        valid = anchor_valid_flags(level_sizes, strides, pad_shapes[i], num_anchors, all_anchors.device)
        valid_index = torch.nonzero(valid).flatten()
        boxes = all_anchors[valid_index]
        a = cfg.rpn
        assigned = assign_max_iou(boxes, gt_boxes[i], a.pos_iou, a.neg_iou, a.min_pos_iou, a.match_low_quality)
        sampled = sample_random(boxes, assigned, gt_boxes[i], a.num, a.pos_fraction, False, generator)
        index = valid_index[torch.cat([sampled.pos_index, sampled.neg_index])]
        chosen_logits.append(logits[i, index])
        chosen_labels.append(torch.cat([torch.ones(len(sampled.pos_index)), torch.zeros(len(sampled.neg_index))]))
        pos_deltas.append(deltas[i, valid_index[sampled.pos_index]])
        pos_targets.append(RPN_CODER.encode(boxes[sampled.pos_index], gt_boxes[i][sampled.pos_gt]))
    chosen = torch.cat(chosen_logits)
    count = max(len(chosen), 1)
    labels = torch.cat(chosen_labels).to(chosen)
    loss_cls = F.binary_cross_entropy_with_logits(chosen, labels, reduction="sum") / count
    pred, target = torch.cat(pos_deltas), torch.cat(pos_targets).to(chosen)
    box = smooth_l1(pred, target, 1 / 9) if cfg.rpn_box_loss == "smooth_l1" else (pred - target).abs()
    return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": box.sum() / count}


# ---------------------------------------------------------------------- RoI heads
def sample_rois(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], stage: RoIStage,
                generator: torch.Generator | None = None) -> list:
    """Per image, the proposals ((n, 4) or (n, 5)) assigned and sampled for ``stage``."""
    a = stage.assign
    results = []
    for boxes, gts in zip(proposals, gt_boxes):
        boxes = boxes[:, :4].detach()
        assigned = assign_max_iou(boxes, gts, a.pos_iou, a.neg_iou, a.min_pos_iou, a.match_low_quality)
        results.append(sample_random(boxes, assigned, gts, a.num, a.pos_fraction, a.add_gt_as_proposals, generator))
    return results


def rois_of(boxes: Sequence[Tensor]) -> Tensor:
    """(sum n, 5) RoIs (image index, x1, y1, x2, y2) from per-image boxes."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes)])


def box_head_loss(cls_score: Tensor, bbox_pred: Tensor, rois: Tensor, sampled: Sequence, gt_boxes: Sequence[Tensor],
                  gt_labels: Sequence[Tensor], stage: RoIStage, num_classes: int) -> dict[str, Tensor]:
    """``loss_cls`` and ``loss_bbox`` of one box head on the sampled RoIs (positives then negatives per image)."""
    labels, targets = [], []
    for s, gts, gt_label in zip(sampled, gt_boxes, gt_labels):
        labels += [gt_label[s.pos_gt], gt_label.new_full((len(s.neg_index),), num_classes)]
        targets.append(gts[s.pos_gt])
    labels = torch.cat(labels)
    count = len(labels)
    loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / max(count, 1)
    positive = labels < num_classes
    coder = DeltaXYWHCoder(stds=stage.stds)
    pos_rois, pos_gt_boxes = rois[positive, 1:], torch.cat(targets).to(rois)
    if bbox_pred.shape[1] == 4:  # class-agnostic (Cascade)
        pos_pred = bbox_pred[positive]
    else:
        pos_pred = bbox_pred.view(count, -1, 4)[positive, labels[positive]]
    if not positive.any():
        loss_box = bbox_pred.sum() * 0
    elif stage.box_loss == "giou":
        loss_box = giou_loss(coder.decode(pos_rois, pos_pred), pos_gt_boxes).sum() / count
    else:
        loss_box = (pos_pred - coder.encode(pos_rois, pos_gt_boxes)).abs().sum() / count
    return {"loss_cls": loss_cls * stage.weight, "loss_bbox": loss_box * stage.box_loss_weight * stage.weight}


def mask_head_loss(mask_logits: Tensor, sampled: Sequence, gt_masks: Sequence[Tensor], gt_labels: Sequence[Tensor],
                   mask_size: int = 28) -> Tensor:
    """Mean binary cross-entropy of each positive RoI's own-class logits ((P, C, S, S)) against its mask target."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum()
    targets = torch.cat([mask_targets(s.boxes[:len(s.pos_index)], s.pos_gt, masks, mask_size)
                         for s, masks in zip(sampled, gt_masks)]).to(mask_logits)
    labels = torch.cat([gt_label[s.pos_gt] for s, gt_label in zip(sampled, gt_labels)])
    own = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(own, targets)


def positive_rois(sampled: Sequence) -> Tensor:
    return rois_of([s.boxes[:len(s.pos_index)] for s in sampled])


def refine_proposals(rois: Tensor, bbox_pred: Tensor, sampled: Sequence, stds: Sequence[float],
                     img_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Cascade's ``refine_bboxes``: each image's RoIs moved by the (class-agnostic) deltas, clipped to its image,
    gt boxes added as proposals left out."""
    refined, start, coder = [], 0, DeltaXYWHCoder(stds=tuple(stds))
    for i, s in enumerate(sampled):
        count = len(s.pos_index) + len(s.neg_index)
        boxes = coder.decode(rois[start:start + count, 1:], bbox_pred[start:start + count].detach(), img_shapes[i])
        keep = torch.ones(count, dtype=torch.bool, device=boxes.device)
        keep[:len(s.pos_index)] = ~s.pos_is_gt
        refined.append(boxes[keep])
        start += count
    return refined


# ---------------------------------------------------------------------- a whole detector
def detector_losses(model: Any, images: Tensor, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                    gt_masks: Sequence[Tensor], img_metas: Sequence[dict], cfg: DetectorTrainCfg,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Every training loss of ``model`` (the detector API of :mod:`overlock.detection`) on one batch."""
    feats = model.extract_feat(images)
    cls_scores, bbox_preds = model.rpn_head(feats)
    anchors = model.anchors(feats)
    losses = rpn_loss(cls_scores, bbox_preds, anchors, gt_boxes, [m["pad_shape"] for m in img_metas], cfg, generator,
                      model.anchor_generator.strides)
    with torch.no_grad():
        proposals = model.proposals(cls_scores, bbox_preds, anchors, img_metas, RPNTestConfig(
            cfg.proposal_nms_pre, cfg.proposal_max_per_img, cfg.proposal_nms_iou, 0.0))
    proposals = [p[:, :4] for p in proposals]
    cascade = len(cfg.stages) > 1
    num_classes = model.num_classes
    feats = feats[:len(model.roi_head.bbox_roi_extractor.strides)]  # the RoI heads read strides 4-32
    for index, stage in enumerate(cfg.stages):
        sampled = sample_rois(proposals, gt_boxes, stage, generator)
        rois = rois_of([s.boxes for s in sampled])
        if cascade:
            cls_score, bbox_pred = model.roi_head.bbox_forward(feats, rois, index)
        else:
            cls_score, bbox_pred = model.roi_head.bbox_forward(feats, rois)
        stage_losses = box_head_loss(cls_score, bbox_pred, rois, sampled, gt_boxes, gt_labels, stage, num_classes)
        pos_rois = positive_rois(sampled)
        mask_logits = (model.roi_head.mask_forward(feats, pos_rois, index) if cascade
                       else model.roi_head.mask_forward(feats, pos_rois))
        mask_loss = mask_head_loss(mask_logits, sampled, gt_masks, gt_labels, cfg.mask_size)
        stage_losses["loss_mask"] = mask_loss * stage.weight
        suffix = f"_s{index}" if cascade else ""
        losses.update({name + suffix: value for name, value in stage_losses.items()})
        if index + 1 < len(cfg.stages):
            proposals = refine_proposals(rois, bbox_pred, sampled, stage.stds, [m["img_shape"] for m in img_metas])
    return losses


class DetectorWithLosses(nn.Module):
    """A detector whose ``forward`` returns its training losses, so that DistributedDataParallel sees the whole
    training computation as one forward (the detector's own ``forward`` detects). ``loss`` is their sum."""

    def __init__(self, detector: nn.Module, cfg: DetectorTrainCfg):
        super().__init__()
        self.detector, self.cfg = detector, cfg

    def forward(self, images: Tensor, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                gt_masks: Sequence[Tensor], img_metas: Sequence[dict]) -> dict[str, Tensor]:
        losses = detector_losses(self.detector, images, gt_boxes, gt_labels, gt_masks, img_metas, self.cfg)
        losses["loss"] = sum(losses.values())
        return losses
