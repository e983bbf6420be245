"""Detection on OverLoCK.

``MaskRCNN`` / ``CascadeMaskRCNN``: the official COCO detectors (mmdetection 2.28 semantics, mmdet state-dict
names; see docs/detection.md). ``fpn_backbone``: the dense backbone with an FPN for torchvision's own detectors.
"""
from .boxes import AnchorGenerator, DeltaXYWHCoder, batched_nms, boxes_to_rois, map_roi_levels, multiclass_nms
from .detectors import (
    DETECTOR_VARIANTS,
    CascadeMaskRCNN,
    DetectorConfig,
    MaskRCNN,
    TestConfig,
    create_cascade_maskrcnn,
    create_detector,
    create_maskrcnn,
    detector_from_mmdet_config,
    load_detector_weights,
    load_official_detector,
    recognise_detector,
)
from .masks import paste_masks
from .necks import FPN
from .roi_heads import (
    CascadeRoIHead,
    ConvFCBBoxHead,
    FCNMaskHead,
    RCNNTestConfig,
    RoIExtractor,
    RoIHead,
    StandardRoIHead,
)
from .rpn import RPNHead, RPNTestConfig, select_proposals
from .torchvision_fpn import BackboneWithFPN, fpn_backbone

__all__ = [
    "DETECTOR_VARIANTS",
    "FPN",
    "AnchorGenerator",
    "BackboneWithFPN",
    "CascadeMaskRCNN",
    "CascadeRoIHead",
    "ConvFCBBoxHead",
    "DeltaXYWHCoder",
    "DetectorConfig",
    "FCNMaskHead",
    "MaskRCNN",
    "RCNNTestConfig",
    "RPNHead",
    "RPNTestConfig",
    "RoIExtractor",
    "RoIHead",
    "StandardRoIHead",
    "TestConfig",
    "batched_nms",
    "boxes_to_rois",
    "create_cascade_maskrcnn",
    "create_detector",
    "create_maskrcnn",
    "detector_from_mmdet_config",
    "fpn_backbone",
    "load_detector_weights",
    "load_official_detector",
    "map_roi_levels",
    "multiclass_nms",
    "paste_masks",
    "recognise_detector",
    "select_proposals",
]
