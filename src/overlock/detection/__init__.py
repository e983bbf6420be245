"""Detection on OverLoCK: COCO data (``data``), training targets and losses (``targets``, ``losses``), COCO
evaluation (``evaluate``); ``fpn_backbone``: the dense backbone with an FPN for torchvision's own detectors."""
from .torchvision_fpn import BackboneWithFPN, fpn_backbone

__all__ = ["BackboneWithFPN", "fpn_backbone"]
