"""OverLoCK as the backbone of torchvision's detectors (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS).

``fpn_backbone`` wraps the official dense backbone (``features_only=True``: strides 4-32 with the extra
norms and the Overview-Net fusion) with torchvision's Feature Pyramid Network, so that the result has
the ``out_channels`` attribute and ``OrderedDict`` output torchvision's detection models expect.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import timm
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool


class BackboneWithFPN(nn.Module):
    """A timm ``features_only`` model followed by an FPN; ``out_channels`` is the FPN width."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=extra_blocks or LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        levels = self.body(x)
        return self.fpn(OrderedDict((str(i), level) for i, level in enumerate(levels)))


def fpn_backbone(
    name: str = "overlock_t",
    weights: str | None = None,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    dense_form: str = "detection",
) -> BackboneWithFPN:
    """An OverLoCK dense backbone with an FPN for torchvision's detectors.

    ``weights``: a checkpoint file: ImageNet weights (the new norms and fusion start from their
    initial values), or an official Mask R-CNN checkpoint (its ``backbone.`` part); the ``backbone.`` part of an
    official UperNet checkpoint needs ``dense_form='segmentation'``.
    """
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)) if weights else {}
    body = timm.create_model(name, features_only=True, out_indices=tuple(out_indices), dense_form=dense_form,
                             **kwargs)
    return BackboneWithFPN(body, out_channels, extra_blocks)
