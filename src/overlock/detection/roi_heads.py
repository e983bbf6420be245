"""mmdetection 2.x's RoI heads: RoIAlign feature extraction, box heads, the FCN mask head, and the standard
(Mask R-CNN) and cascade (Cascade Mask R-CNN) heads with their test-time post-processing."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..layers import ConvBNReLU
from .boxes import DeltaXYWHCoder, boxes_to_rois, map_roi_levels, multiclass_nms
from .masks import paste_masks
from .necks import ConvModule

__all__ = [
    "CASCADE_STDS", "CascadeRoIHead", "ConvFCBBoxHead", "FCNMaskHead", "RCNNTestConfig", "RoIExtractor", "RoIHead",
    "StandardRoIHead", "rcnn_test_config",
]

# the delta normalisation of Mask R-CNN's box head and of Cascade's three stages
BOX_STDS = (0.1, 0.1, 0.2, 0.2)
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


@dataclass(frozen=True)
class RCNNTestConfig:
    """mmdet's ``test_cfg.rcnn``: class scores must exceed ``score_thr``; per-class NMS IoU; detections kept per
    image; mask probability threshold (``>=``)."""

    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5


def rcnn_test_config(test_cfg: dict[str, Any]) -> RCNNTestConfig:
    """An mmdet ``test_cfg.rcnn`` dict as an ``RCNNTestConfig``."""
    return RCNNTestConfig(score_thr=test_cfg["score_thr"], iou_threshold=test_cfg["nms"]["iou_threshold"],
                          max_per_img=test_cfg["max_per_img"], mask_thr_binary=test_cfg.get("mask_thr_binary", 0.5))


class RoIExtractor(nn.Module):
    """mmdet's ``SingleRoIExtractor``: each RoI is pooled (RoIAlign, ``aligned=True``, adaptive sampling) from the
    FPN level ``map_roi_levels`` gives it, at that level's stride. No parameters."""

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), finest_scale: float = 56.0):
        super().__init__()
        self.output_size = output_size
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def roi_levels(self, rois: Tensor) -> Tensor:
        return map_roi_levels(rois, len(self.strides), self.finest_scale)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """(n, C, S, S) features of ``rois`` (n, 5) from the first ``len(strides)`` FPN levels."""
        out = features[0].new_zeros(rois.shape[0], features[0].shape[1], self.output_size, self.output_size)
        levels = self.roi_levels(rois)
        for level, stride in enumerate(self.strides):
            index = (levels == level).nonzero().squeeze(1)
            if index.numel() > 0:
                out[index] = roi_align(features[level], rois[index], self.output_size, spatial_scale=1 / stride,
                                       sampling_ratio=0, aligned=True)
        return out


class ConvFCBBoxHead(nn.Module):
    """mmdet's ``ConvFCBBoxHead`` with shared layers only: ``num_convs`` 3x3 conv-BN-ReLU blocks on the RoI
    features, then ``num_fcs`` fc-ReLU layers, then ``fc_cls`` (classes + 1 logits, background last) and ``fc_reg``
    (4 deltas per class, or 4 when ``class_agnostic``). Mask R-CNN's ``Shared2FCBBoxHead`` is 0 convs and 2 fcs;
    Swin's Cascade heads are 4 convs and 1 fc. ``fc_cls``/``fc_reg`` come first in the state dict, as in mmdet."""

    def __init__(self, in_channels: int = 256, num_classes: int = 80, num_convs: int = 0, conv_channels: int = 256,
                 num_fcs: int = 2, fc_channels: int = 1024, roi_size: int = 7, class_agnostic: bool = False,
                 stds: Sequence[float] = BOX_STDS):
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.coder = DeltaXYWHCoder(stds=tuple(stds))
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 if class_agnostic else 4 * num_classes)
        self.shared_convs = nn.Sequential(*[
            ConvBNReLU(in_channels if i == 0 else conv_channels, conv_channels, 3) for i in range(num_convs)
        ])
        flat = (conv_channels if num_convs else in_channels) * roi_size * roi_size
        self.shared_fcs = nn.ModuleList([nn.Linear(flat if i == 0 else fc_channels, fc_channels)
                                         for i in range(num_fcs)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (n, classes + 1) and deltas (n, 4 * classes or 4) of RoI features (n, C, S, S)."""
        x = self.shared_convs(x).flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def refine(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_shape: Sequence[int]) -> Tensor:
        """mmdet's ``regress_by_class``: RoIs (n, 5) of one image moved by the deltas of their best non-background
        class (all classes share them when class-agnostic), clipped to ``img_shape``."""
        if not self.class_agnostic:
            label = cls_score[:, :-1].argmax(dim=1) * 4
            bbox_pred = torch.gather(bbox_pred, 1, torch.stack([label, label + 1, label + 2, label + 3], 1))
        return torch.cat([rois[:, :1], self.coder.decode(rois[:, 1:], bbox_pred, max_shape=img_shape)], dim=1)

    def detect(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict[str, Any],
               cfg: RCNNTestConfig, rescale: bool = True) -> tuple[Tensor, Tensor]:
        """mmdet's ``get_bboxes`` for one image: softmax scores, every class's box decoded on its RoI and clipped to
        ``img_shape``, divided by ``scale_factor`` when ``rescale``, then ``multiclass_nms``. Returns
        ``(dets (k, 5), labels (k,))``."""
        scores = F.softmax(cls_score, dim=-1)
        boxes = self.coder.decode(rois[:, 1:], bbox_pred, max_shape=img_meta["img_shape"])
        if rescale and boxes.shape[0] > 0:
            boxes = (boxes.view(boxes.shape[0], -1, 4) / scale_factor(img_meta, boxes)).view(boxes.shape[0], -1)
        return multiclass_nms(boxes, scores, cfg.score_thr, cfg.iou_threshold, cfg.max_per_img)


class FCNMaskHead(nn.Module):
    """mmdet's ``FCNMaskHead``: ``num_convs`` 3x3 conv-ReLU blocks on 14x14 RoI features, a 2x2 stride-2
    transposed conv with ReLU, and a 1x1 conv giving 28x28 logits per class."""

    def __init__(self, in_channels: int = 256, num_classes: int = 80, num_convs: int = 4, conv_channels: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else conv_channels, conv_channels, 3)
                                     for i in range(num_convs)])
        self.upsample = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_logits(F.relu(self.upsample(self.convs(x))))


def scale_factor(img_meta: dict[str, Any], like: Tensor) -> Tensor:
    """The image's (w, h, w, h) scale factor (network size / original size) as float32, as mmdet holds it."""
    return torch.as_tensor(img_meta["scale_factor"], dtype=torch.float32).to(like.device)


def group_by_class(boxes: Tensor, scores: Tensor, labels: Tensor, masks: Tensor | None, num_classes: int
                   ) -> dict[str, list[Tensor]]:
    """mmdet's per-class result lists: boxes (n_c, 5) with their score, masks (n_c, H, W), detection order."""
    dets = torch.cat([boxes, scores[:, None]], dim=1)
    out = {"boxes": [dets[labels == c] for c in range(num_classes)]}
    if masks is not None:
        out["masks"] = [masks[labels == c] for c in range(num_classes)]
    return out


class RoIHead(nn.Module):
    """What both RoI heads share: the two RoI extractors and the test path from proposals to pasted masks, given
    a subclass's ``detect_boxes`` (boxes and labels per image) and ``mask_probs`` (mask probabilities of RoIs)."""

    def __init__(self, roi_size: int = 7, mask_roi_size: int = 14, strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__()
        self.bbox_roi_extractor = RoIExtractor(roi_size, strides)
        self.mask_roi_extractor = RoIExtractor(mask_roi_size, strides)

    def mask_rois(self, det_boxes: Sequence[Tensor], img_metas: Sequence[dict[str, Any]], rescale: bool) -> Tensor:
        """The RoIs the mask head sees: the final boxes back in input pixels (times ``scale_factor`` when they were
        rescaled), with their image index."""
        return boxes_to_rois([b * scale_factor(m, b) if rescale else b for b, m in zip(det_boxes, img_metas)])

    @staticmethod
    def paste(probs: Tensor, mask_rois: Tensor, labels: Tensor, img_meta: dict[str, Any], threshold: float,
              rescale: bool) -> Tensor:
        """Binary masks of one image's detections from per-class probabilities (n, classes, M, M): the channel of
        each label, pasted at ``ori_shape`` (``rescale``) or ``img_shape``."""
        boxes = mask_rois[:, 1:]
        if rescale:
            boxes = boxes / scale_factor(img_meta, boxes)
            height, width = img_meta["ori_shape"][:2]
        else:
            height, width = img_meta["img_shape"][:2]
        chosen = probs[torch.arange(probs.shape[0], device=probs.device), labels]
        return paste_masks(chosen, boxes, int(height), int(width), threshold)

    def detect_boxes(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                     img_metas: Sequence[dict[str, Any]], cfg: RCNNTestConfig, rescale: bool = True
                     ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image ``(dets (k, 5), labels (k,))`` from the proposals (mmdet's ``simple_test_bboxes``)."""
        raise NotImplementedError

    def mask_probs(self, features: Sequence[Tensor], mask_rois: Tensor) -> Tensor:
        """Mask probabilities (n, classes, 28, 28) of ``mask_rois``."""
        raise NotImplementedError

    def simple_test(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                    img_metas: Sequence[dict[str, Any]], cfg: RCNNTestConfig, rescale: bool = True
                    ) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` (k, 4), ``scores`` (k,), ``labels`` (k,), ``masks`` (k, H, W) bool, by score."""
        dets, labels = self.detect_boxes(features, proposals, img_metas, cfg, rescale)
        mask_rois = self.mask_rois([d[:, :4] for d in dets], img_metas, rescale)
        probs = self.mask_probs(features, mask_rois) if mask_rois.shape[0] else None
        results = []
        for i, (det, label, meta) in enumerate(zip(dets, labels, img_metas)):
            if probs is None or det.shape[0] == 0:
                size = meta["ori_shape" if rescale else "img_shape"][:2]
                masks = torch.zeros(0, int(size[0]), int(size[1]), dtype=torch.bool, device=det.device)
            else:
                in_image = mask_rois[:, 0] == i
                masks = self.paste(probs[in_image], mask_rois[in_image], label, meta, cfg.mask_thr_binary, rescale)
            results.append(dict(boxes=det[:, :4], scores=det[:, 4], labels=label, masks=masks))
        return results


class StandardRoIHead(RoIHead):
    """Mask R-CNN's RoI head (mmdet's ``StandardRoIHead``): ``bbox_head`` and ``mask_head`` on RoIAlign features."""

    def __init__(self, bbox_head: ConvFCBBoxHead, mask_head: FCNMaskHead, roi_size: int = 7,
                 mask_roi_size: int = 14, strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__(roi_size, mask_roi_size, strides)
        self.num_classes = mask_head.num_classes
        self.bbox_head = bbox_head
        self.mask_head = mask_head

    def bbox_forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits and deltas of ``rois`` (n, 5)."""
        return self.bbox_head(self.bbox_roi_extractor(features, rois))

    def mask_forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Mask logits (n, classes, 28, 28) of ``rois`` (n, 5)."""
        return self.mask_head(self.mask_roi_extractor(features, rois))

    def detect_boxes(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                     img_metas: Sequence[dict[str, Any]], cfg: RCNNTestConfig, rescale: bool = True
                     ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image ``(dets (k, 5), labels (k,))`` from the proposals (mmdet's ``simple_test_bboxes``)."""
        rois = boxes_to_rois(proposals)
        cls_score, bbox_pred = self.bbox_forward(features, rois)
        counts = [len(p) for p in proposals]
        results = [self.bbox_head.detect(r, s, d, m, cfg, rescale)
                   for r, s, d, m in zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts),
                                         img_metas)]
        return [r[0] for r in results], [r[1] for r in results]

    def mask_probs(self, features: Sequence[Tensor], mask_rois: Tensor) -> Tensor:
        """Mask probabilities (n, classes, 28, 28) of ``mask_rois``."""
        return self.mask_forward(features, mask_rois).sigmoid()

    def forward_dummy(self, features: Sequence[Tensor], rois: Tensor, num_mask_rois: int) -> list[Tensor]:
        """The box head on ``rois`` and the mask head on the first ``num_mask_rois`` (mmdet's FLOPs path)."""
        return [*self.bbox_forward(features, rois), self.mask_forward(features, rois[:num_mask_rois])]


class CascadeRoIHead(RoIHead):
    """Cascade Mask R-CNN's RoI head (mmdet's ``CascadeRoIHead``): stages of box heads, each refining the RoIs
    of the one before, and one mask head per stage. At test time the final scores are the softmax of the stages'
    mean logits, the final boxes the last stage's deltas on its RoIs, the masks the mean of the stages'
    probabilities."""

    def __init__(self, bbox_heads: Sequence[ConvFCBBoxHead], mask_heads: Sequence[FCNMaskHead], roi_size: int = 7,
                 mask_roi_size: int = 14, strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__(roi_size, mask_roi_size, strides)
        if len(bbox_heads) != len(mask_heads):
            raise ValueError(f"{len(bbox_heads)} box heads but {len(mask_heads)} mask heads")
        self.num_stages = len(bbox_heads)
        self.num_classes = mask_heads[-1].num_classes
        self.bbox_head = nn.ModuleList(bbox_heads)
        self.mask_head = nn.ModuleList(mask_heads)

    def bbox_forward(self, features: Sequence[Tensor], rois: Tensor, stage: int = 0) -> tuple[Tensor, Tensor]:
        """Class logits and class-agnostic deltas of stage ``stage`` on ``rois`` (n, 5)."""
        return self.bbox_head[stage](self.bbox_roi_extractor(features, rois))

    def mask_forward(self, features: Sequence[Tensor], rois: Tensor, stage: int = 0) -> Tensor:
        """Mask logits (n, classes, 28, 28) of stage ``stage`` on ``rois`` (n, 5)."""
        return self.mask_head[stage](self.mask_roi_extractor(features, rois))

    def cascade(self, features: Sequence[Tensor], rois: Tensor, img_metas: Sequence[dict[str, Any]]
                ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per stage ``(rois, cls_score, bbox_pred)``: the RoIs it saw and its outputs; stage i + 1 sees stage i's
        RoIs refined by its deltas (per image, clipped to that image's ``img_shape``)."""
        stages = []
        for stage in range(self.num_stages):
            cls_score, bbox_pred = self.bbox_forward(features, rois, stage)
            stages.append((rois, cls_score, bbox_pred))
            if stage < self.num_stages - 1:
                head = self.bbox_head[stage]
                rois = torch.cat([
                    head.refine(rois[index], cls_score[index], bbox_pred[index], meta["img_shape"])
                    for index, meta in ((rois[:, 0] == i, m) for i, m in enumerate(img_metas))
                ])
        return stages

    def detect_boxes(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                     img_metas: Sequence[dict[str, Any]], cfg: RCNNTestConfig, rescale: bool = True
                     ) -> tuple[list[Tensor], list[Tensor]]:
        stages = self.cascade(features, boxes_to_rois(proposals), img_metas)
        rois, _, bbox_pred = stages[-1]
        mean_score = sum(s[1] for s in stages) / float(self.num_stages)
        dets, labels = [], []
        for i, meta in enumerate(img_metas):
            index = rois[:, 0] == i
            det, label = self.bbox_head[-1].detect(rois[index], mean_score[index], bbox_pred[index], meta, cfg,
                                                   rescale)
            dets.append(det)
            labels.append(label)
        return dets, labels

    def forward_dummy(self, features: Sequence[Tensor], rois: Tensor, num_mask_rois: int) -> list[Tensor]:
        """Every stage's box head on ``rois``, then every mask head on the first ``num_mask_rois``."""
        outs: list[Tensor] = []
        for stage in range(self.num_stages):
            outs.extend(self.bbox_forward(features, rois, stage))
        return outs + [self.mask_forward(features, rois[:num_mask_rois], s) for s in range(self.num_stages)]

    def mask_probs(self, features: Sequence[Tensor], mask_rois: Tensor) -> Tensor:
        return sum(self.mask_forward(features, mask_rois, s).sigmoid() for s in range(self.num_stages)) / float(
            self.num_stages)
