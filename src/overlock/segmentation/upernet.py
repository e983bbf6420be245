"""UperNet on OverLoCK: the official ADE20K segmentation model, in plain PyTorch.

The official models were built with mmsegmentation 0.30: an ``EncoderDecoder`` of the OverLoCK *segmentation*
backbone (``dense_form='segmentation'``: a LayerNorm on each pyramid level, no Overview-Net fusion into stage 4),
a ``UPerHead`` on all four levels (pyramid pooling at scales 1, 2, 3, 6 on the last; a top-down FPN; 512 channels)
and an ``FCNHead`` on level 3 that only the training loss uses. Module and parameter names here are
mmsegmentation's, so that ``upernet_overlock_{tiny,small,base}_ade20k.pth`` load strictly. Every conv block is
conv (no bias), BatchNorm, ReLU; every resize is bilinear without corner alignment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..layers import ConvBNReLU
from ..models.overlock import CheckpointMismatchError, OverLoCK, dense_state_dict, mismatch_report, official_backbone

__all__ = [
    "UPERNET_VARIANTS", "FCNHead", "UPerHead", "UperNet", "create_upernet", "load_upernet_checkpoint",
    "load_upernet_weights", "read_checkpoint", "upernet_from_mmseg_config", 
]

POOL_SCALES = (1, 2, 3, 6)

# the official UperNet models and their backbones
UPERNET_VARIANTS: dict[str, str] = {
    "upernet_overlock_t": "overlock_t", "upernet_overlock_s": "overlock_s", "upernet_overlock_b": "overlock_b",
}


def resize_to(x: Tensor, size: List[int]) -> Tensor:
    """Bilinear resize without corner alignment (the only resize the official model uses)."""
    return F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)


@register_notrace_function  # reads a shape: a leaf function for fx
def resize_as(x: Tensor, reference: Tensor) -> Tensor:
    """``resize_to`` the spatial size of ``reference``."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


torch.fx.wrap("resize_as")


class PyramidPooling(nn.ModuleList):
    """PSPNet's pooling module: per scale an adaptive average pool to scale x scale and a 1x1 block, each result
    resized back to the input size."""

    def __init__(self, in_chs: int, channels: int, scales: Sequence[int] = POOL_SCALES, **dd: Any):
        super().__init__(
            [nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_chs, channels, 1, **dd)) for s in scales]
        )

    def forward(self, x: Tensor) -> List[Tensor]:
        return [resize_as(stage(x), x) for stage in self]


class DecodeHead(nn.Module):
    """What every mmsegmentation head ends with: 2-D dropout, then a 1x1 classifier (``conv_seg``, with bias,
    PyTorch's default initialisation as in the official training)."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1, **dd: Any):
        super().__init__()
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, **dd)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def classify(self, features: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(features))


class UPerHead(DecodeHead):
    """UperNet's decode head: pyramid pooling on the last level, lateral 1x1 blocks on the others, a top-down
    pathway (each level plus the upsampled level above it), 3x3 blocks on levels 1-3, everything upsampled to level 1,
    concatenated and fused by a 3x3 block before the classifier. Logits at the stride of level 1."""

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
        pool_scales: Sequence[int] = POOL_SCALES, dropout: float = 0.1, **dd: Any,
    ):
        super().__init__(channels, num_classes, dropout, **dd)
        *lower, top = in_channels
        self.psp_modules = PyramidPooling(top, channels, pool_scales, **dd)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3, **dd)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1, **dd) for c in lower])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3, **dd) for _ in lower])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, **dd)

    def forward(self, features: List[Tensor]) -> Tensor:
        top = features[-1]
        laterals = [conv(features[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat([top] + self.psp_modules(top), dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize_as(laterals[i], laterals[i - 1])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        fused = torch.cat([outs[0]] + [resize_as(out, outs[0]) for out in outs[1:]], dim=1)
        return self.classify(self.fpn_bottleneck(fused))


class FCNHead(DecodeHead):
    """The auxiliary head: ``num_convs`` 3x3 blocks on one level, then the classifier."""

    def __init__(self, in_chs: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1,
                 **dd: Any):
        super().__init__(channels, num_classes, dropout, **dd)
        self.convs = nn.Sequential(*[ConvBNReLU(in_chs if i == 0 else channels, channels, 3, **dd)
                                     for i in range(num_convs)])

    def forward(self, features: Tensor) -> Tensor:
        return self.classify(self.convs(features))


class UperNet(nn.Module):
    """An OverLoCK dense backbone (``forward_pyramid``: four levels), a ``UPerHead`` on them and an optional
    ``FCNHead`` on level ``aux_index`` (mmsegmentation's ``EncoderDecoder``, with its state-dict names).

    ``forward`` returns the decode head's logits at the stride of level 1 (a quarter of the input size) in eval
    mode, and the pair (decode logits, auxiliary logits) in train mode when the auxiliary head exists (its loss
    weight is the trainer's). ``forward_logits`` gives logits at the input size, as mmsegmentation's
    ``encode_decode``.
    """

    def __init__(self, backbone: OverLoCK, decode_head: UPerHead, auxiliary_head: Optional[FCNHead] = None,
                 aux_index: int = 2):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_index = aux_index
        self.num_classes = decode_head.num_classes

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """The backbone's four pyramid levels (strides 4-32)."""
        return self.backbone.forward_pyramid(x)[0]

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        features = self.forward_features(x)
        logits = self.decode_head(features)
        if self.training and self.auxiliary_head is not None:
            return logits, self.auxiliary_head(features[self.aux_index])
        return logits

    def forward_logits(self, x: Tensor) -> Tensor:
        """Decode-head logits resized (bilinear) to the input size."""
        features = self.forward_features(x)
        return resize_as(self.decode_head(features), x)


def create_upernet(
    backbone: str = "overlock_t",
    num_classes: int = 150,
    channels: int = 512,
    aux_channels: Optional[int] = 256,
    aux_index: int = 2,
    pool_scales: Sequence[int] = POOL_SCALES,
    dropout: float = 0.1,
    backbone_weights: Optional[str] = None,
    weights: Optional[str] = None,
    device: Any = None,
    dtype: Any = None,
    **backbone_kwargs: Any,
) -> UperNet:
    """The official UperNet on an OverLoCK variant (``backbone``: a timm model name).

    The backbone is built in its segmentation form (``dense_form='segmentation'``); ``backbone_kwargs`` go to it
    (``drop_path_rate``, ``output_stride``, architecture overrides). ``backbone_weights``: a checkpoint for the
    backbone alone (ImageNet weights: the extra norms keep their initial values, as in the official training).
    ``weights``: a whole UperNet checkpoint (official ``upernet_overlock_*_ade20k.pth`` or one of ours), loaded
    strictly. ``aux_channels=None`` builds no auxiliary head.
    """
    dd = dict(device=device, dtype=dtype)
    kwargs: dict[str, Any] = dict(dense_form="segmentation", **backbone_kwargs, **dd)
    if backbone_weights:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=backbone_weights))
    body = timm.create_model(backbone, **kwargs)
    chs = [info["num_chs"] for info in body.feature_info]
    decode = UPerHead(chs, num_classes, channels, pool_scales, dropout, **dd)
    aux = FCNHead(chs[aux_index], num_classes, aux_channels, dropout=dropout, **dd) if aux_channels else None
    model = UperNet(body, decode, aux, aux_index)
    if weights:
        load_upernet_checkpoint(model, weights)
    return model


def upernet_from_mmseg_config(config: dict[str, Any], **kwargs: Any) -> UperNet:
    """The UperNet an mmsegmentation ``model`` config of the official code describes (``EncoderDecoder`` with an
    OverLoCK backbone, a ``UPerHead`` and an ``FCNHead``): a registered variant (``type='overlock_t'``) or the
    ``OverLoCK`` class with its arguments. ``kwargs`` go to ``create_upernet``."""
    name, backbone_args = official_backbone(config["backbone"])
    decode, aux = config["decode_head"], config.get("auxiliary_head")
    return create_upernet(
        name, num_classes=decode["num_classes"], channels=decode["channels"],
        aux_channels=aux["channels"] if aux else None, aux_index=aux["in_index"] if aux else 2,
        pool_scales=tuple(decode["pool_scales"]), dropout=decode["dropout_ratio"],
        **backbone_args, **kwargs,
    )


def read_checkpoint(path: Union[str, Path]) -> Any:
    """A checkpoint file's contents, loaded weights-only, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable here
        raise ValueError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def load_upernet_weights(model: UperNet, checkpoint: Any, source: Union[str, Path] = "checkpoint") -> UperNet:
    """Load the weights of a checkpoint (any wrapper, see ``dense_state_dict``) into ``model``, strictly."""
    state_dict = dense_state_dict(checkpoint)
    check_fits(state_dict, model, source)
    model.load_state_dict(state_dict)
    return model


def load_upernet_checkpoint(model: UperNet, path: Union[str, Path]) -> UperNet:
    """Load an UperNet checkpoint file strictly, with a clear error for a missing, unreadable or unfitting file."""
    return load_upernet_weights(model, read_checkpoint(path), path)


def check_fits(state_dict: dict[str, Tensor], model: nn.Module, source: Union[str, Path] = "checkpoint") -> None:
    """Raise ``CheckpointMismatchError`` listing missing, unexpected and mis-shaped keys, with a hint for the usual
    mistakes (a detection checkpoint, a backbone-only one, another number of classes)."""
    target = model.state_dict()
    missing = set(target) - set(state_dict)
    unexpected = set(state_dict) - set(target)
    mis_shaped = {f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state_dict.items() if k in target and v.shape != target[k].shape}
    if not (missing or unexpected or mis_shaped):
        return
    lines = mismatch_report(f"{source} does not fit the UperNet model", missing, unexpected, mis_shaped)
    if any(k.startswith("backbone.h_proj.") or k.startswith("backbone.extra_norm.4.") for k in unexpected):
        lines.append("hint: this is a detection (Mask R-CNN) checkpoint: its backbone fuses the Overview-Net into "
                     "stage 4, which the segmentation backbone does not")
    elif not any(k.startswith(("decode_head.", "backbone.")) for k in state_dict):
        lines.append("hint: this holds no UperNet weights: pass a classification checkpoint as the backbone's weights")
    elif any(k.startswith("decode_head.conv_seg.") for k in {m.split(" ")[0] for m in mis_shaped}):
        lines.append("hint: the checkpoint has another number of classes")
    raise CheckpointMismatchError("\n  ".join(lines))
