"""OverLoCK: an Overview-first, Look-Closely-next ConvNet with context-mixing dynamic kernels.

Paper: "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels",
Meng Lou and Yizhou Yu, CVPR 2025 (https://arxiv.org/abs/2502.20087).

The network is a Base-Net (stem, stages 1-3 of Dilated RepConv blocks), an Overview-Net (stage 4,
stride 32) whose output is projected into a coarse context prior, and a Focus-Net (ContMix blocks at
strides 16 and 32) that carries the context channels along and is guided by the prior in every block.
Module and parameter names follow the official implementation so that its checkpoints load as they are.
"""
from __future__ import annotations

import logging
import os
import zipfile
from typing import Any, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..layers import ContextDownsample, DilatedRepConv, DynamicConvBlock, LayerNorm2d, LayerScale, RepConvBlock
from ..layers.blocks import conv_bn, stem

__all__ = ["OverLoCK", "OverLoCKOutput", "CheckpointMismatchError", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

MIN_INPUT_SIZE = 32


class OverLoCKOutput(NamedTuple):
    """Train-mode output: logits of the main (Focus-Net) head and the auxiliary (Overview-Net) head."""

    main: Tensor
    aux: Tensor


# stage-1 output per part of the batch in CPU inference (see ``OverLoCK._stage1_chunks``): four images at
# 224 px for XT; whole batches (8 at 224 px) were 20-25 % slower through the stem and stage 1, as were parts
# of one or two images (`python benchmarks/stage1_chunks.py`)
STAGE1_BYTES_PER_CHUNK = 3 << 20


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model."""


@register_notrace_function
def check_image_batch(x: Tensor, in_chans: int) -> None:
    """Clear errors for inputs the model cannot take."""
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(f"input must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {tuple(x.shape[-2:])}")


@register_notrace_function
def compute_layout(x: Tensor) -> Tensor:
    """The memory layout the network runs in: channels-last (NHWC) on CPUs, where the large
    depthwise convolutions are an order of magnitude faster in it; the caller's layout elsewhere."""
    if x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


@register_notrace_function
def resize_like(x: Tensor, reference: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``reference`` (the context prior to stride 16)."""
    return F.interpolate(x, size=reference.shape[2:], mode="bilinear", align_corners=False)


class OverLoCK(nn.Module):
    """OverLoCK classification model, or its dense-prediction backbone (``dense=True``).

    Args:
        depths: RepConv blocks in Base-Net stages 1-3 and the Overview-Net (stage 4).
        sub_depths: Focus-Net (ContMix) blocks at stride 16 and stride 32.
        embed_dims: channels of stages 1-4.
        kernel_sizes: large-kernel size per stage (stage 3 and 4 sizes also set the dynamic kernels).
        mlp_ratios: ConvFFN ratio of the RepConv blocks per stage.
        sub_mlp_ratios: ConvFFN ratio of the Focus-Net blocks.
        sub_num_heads: dynamic-kernel heads of the Focus-Net stages (doubled into groups).
        ls_init_values: LayerScale init per stage (None: no LayerScale).
        res_scale: scale the residual shortcut instead of the branch.
        smk_size: small dynamic kernel size.
        projection: width of the main head's 1x1 projection before pooling.
        deploy: build every Dilated RepConv already merged (the ``_reparam`` variants).
        with_aux_head: keep the Overview-Net auxiliary classifier (used for the training loss).
        dense: build the detection/segmentation backbone (extra output norms, Overview-Net fusion
            into stage 4, no classifier heads) whose forward returns the stride 4-32 pyramid.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 3, 2),
        sub_depths: Sequence[int] = (6, 2),
        embed_dims: Sequence[int] = (56, 112, 256, 336),
        kernel_sizes: Sequence[int] = (17, 15, 13, 7),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        sub_mlp_ratios: Sequence[float] = (3, 3),
        sub_num_heads: Sequence[int] = (4, 6),
        ls_init_values: Sequence[float | None] = (None, None, 1, 1),
        res_scale: bool = True,
        smk_size: int = 5,
        projection: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        deploy: bool = False,
        with_aux_head: bool = True,
        dense: bool = False,
    ):
        super().__init__()
        d1, d2, d3, d4 = embed_dims
        ctx_dim = d4 // 4
        self.dense = dense
        self.drop_rate = drop_rate
        self.num_features = d4 + ctx_dim
        self.head_hidden_size = projection
        self.grad_checkpointing: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.feature_info = [
            dict(num_chs=d1, reduction=4, module="blocks1"),
            dict(num_chs=d2, reduction=8, module="blocks2"),
            dict(num_chs=d3 + ctx_dim, reduction=16, module="sub_blocks3"),
            dict(num_chs=d4 + ctx_dim, reduction=32, module="sub_blocks4"),
        ]

        # Base-Net: stem and stages 1-3; Overview-Net: stage 4 and the context projection
        self.patch_embed1 = stem(in_chans, d1)
        self.patch_embed2 = conv_bn(d1, d2, stride=2)
        self.patch_embed3 = conv_bn(d2, d3, stride=2)
        self.patch_embed4 = conv_bn(d3, d4, stride=2)
        self.high_level_proj = nn.Conv2d(d4, ctx_dim, 1)
        self.patch_embedx = ContextDownsample(d3, d4)

        num_blocks = sum(depths) + sum(sub_depths)
        dpr = iter(torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist())
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks = nn.ModuleList(
                RepConvBlock(
                    dim,
                    kernel_size=kernel_sizes[i],
                    mlp_ratio=mlp_ratios[i],
                    ls_init_value=ls_init_values[i],
                    res_scale=res_scale,
                    drop_path=next(dpr),
                    deploy=deploy,
                )
                for _ in range(depth)
            )
            self.add_module(f"blocks{i + 1}", blocks)

        # Focus-Net: context-guided ContMix blocks at stride 16 and 32
        for j, (stage, depth) in enumerate(zip((2, 3), sub_depths)):
            blocks = nn.ModuleList(
                DynamicConvBlock(
                    embed_dims[stage],
                    ctx_dim=d4,
                    kernel_size=kernel_sizes[stage],
                    smk_size=smk_size,
                    num_heads=sub_num_heads[j],
                    mlp_ratio=sub_mlp_ratios[j],
                    ls_init_value=ls_init_values[stage],
                    res_scale=res_scale,
                    drop_path=next(dpr),
                    is_first=(j == 0 and k == 0),
                    is_last=(j == 1 and k == depth - 1),
                    deploy=deploy,
                )
                for k in range(depth)
            )
            self.add_module(f"sub_blocks{stage + 1}", blocks)

        if dense:
            self.num_classes = 0
            self.h_proj = nn.Sequential(nn.Conv2d(d4, d4 + ctx_dim, 1), LayerScale(d4 + ctx_dim, 1e-5))
            self.extra_norm = nn.ModuleList(
                LayerNorm2d(info["num_chs"]) for info in self.feature_info
            ).append(LayerNorm2d(d4))
        else:
            self.num_classes = num_classes
            self.global_pool = global_pool
            if with_aux_head:
                self.aux_head = nn.Sequential(nn.BatchNorm2d(d4), nn.AdaptiveAvgPool2d(1), _classifier(d4, num_classes))
            self.head = nn.Sequential(
                nn.Conv2d(self.num_features, projection, 1, bias=False),
                nn.BatchNorm2d(projection),
                nn.SiLU(),
                _pool(global_pool),
                _classifier(projection, num_classes),
            )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm model API
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool | Sequence[int | bool] = True) -> None:
        """Recompute blocks in the backward pass to save memory.

        ``enable`` is a bool for every stage, or four per-stage values (True/False, or how many of
        the stage's leading blocks to checkpoint, as the official ``use_checkpoint`` list).
        Stage 3 and 4 values also cover the Focus-Net blocks at the same stride.
        """
        values = [enable] * 4 if isinstance(enable, bool) else list(enable)
        if len(values) != 4:
            raise ValueError(f"expected a bool or 4 per-stage values, got {enable!r}")
        self.grad_checkpointing = tuple(10**9 if v is True else int(v) for v in values)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head[4]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace both classifiers (main and auxiliary) for ``num_classes`` (0 removes them)."""
        if self.dense:
            raise RuntimeError("the dense backbone has no classifier")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.head[3] = _pool(global_pool)
        device = self.head[0].weight.device
        self.head[4] = _classifier(self.head_hidden_size, num_classes).to(device)
        if hasattr(self, "aux_head"):
            self.aux_head[2] = _classifier(self.aux_head[0].num_features, num_classes).to(device)

    @torch.no_grad()
    def reparameterize(self) -> "OverLoCK":
        """Merge every Dilated RepConv in place: the model becomes its ``_reparam`` (deploy) form."""
        for m in self.modules():
            if isinstance(m, DilatedRepConv):
                m.reparameterize()
        return self

    # ------------------------------------------------------------------ forward pieces
    def _call(self, stage: int, index: int, block: nn.Module, *args: Tensor):
        """Run one block, recomputing it in the backward pass when checkpointing covers it."""
        if index < self.grad_checkpointing[stage - 1] and torch.is_grad_enabled():
            return checkpoint(block, *args)
        return block(*args)

    def _stem_and_stage1(self, x: Tensor) -> Tensor:
        """The stride-4 features: stem, then the stage-1 blocks."""
        x = self.patch_embed1(x)
        for i, blk in enumerate(self.blocks1):
            x = self._call(1, i, blk, x)
        return x

    def _stage1_chunks(self, x: Tensor) -> int:
        """Parts of the batch that CPU inference runs the stem and stage 1 on one after the other.

        Their maps are the network's largest (stage 1's ConvFFN widens the stride-4 map fourfold), and
        whole-batch maps of tens of MB cost more in fresh pages and cache misses than a few more calls
        cost in overhead. In eval mode every layer is per-image, so the result is the same.
        """
        if (
            self.training
            or torch.is_grad_enabled()
            or is_fx_symbolic_tracing()
            or torch.compiler.is_compiling()
            or x.device.type != "cpu"
        ):
            return 1
        batch, _, height, width = x.shape
        per_image = self.feature_info[0]["num_chs"] * -(-height // 4) * -(-width // 4) * x.element_size()
        return max(1, min(batch, -(-batch * per_image // STAGE1_BYTES_PER_CHUNK)))

    def _levels(self, x: Tensor, last: int = 3) -> list[Tensor]:
        """Pyramid outputs at strides 4, 8, 16, 32 (levels 0..``last``) plus, for classification
        models, the Overview-Net output as an extra final entry when ``last`` is 3."""
        check_image_batch(x, self.patch_embed1[0].in_channels)
        out: list[Tensor] = []
        x = compute_layout(x)
        chunks = self._stage1_chunks(x)
        if chunks > 1:
            x = torch.cat([self._stem_and_stage1(part) for part in x.tensor_split(chunks)])
        else:
            x = self._stem_and_stage1(x)
        out.append(self.extra_norm[0](x) if self.dense else x)
        if last == 0:
            return out
        x = self.patch_embed2(x)
        for i, blk in enumerate(self.blocks2):
            x = self._call(2, i, blk, x)
        if self.dense:
            x = self.extra_norm[1](x)  # the official dense backbone feeds the normed map onward
        out.append(x)
        if last == 1:
            return out
        x = self.patch_embed3(x)
        for i, blk in enumerate(self.blocks3):
            x = self._call(3, i, blk, x)
        overview = self.patch_embed4(x)
        for i, blk in enumerate(self.blocks4):
            overview = self._call(4, i, blk, overview)
        ctx_prior = self.high_level_proj(overview)
        ctx_up = resize_like(ctx_prior, x)
        ctx = ctx_up
        for i, blk in enumerate(self.sub_blocks3):
            x, ctx = self._call(3, i, blk, x, ctx, ctx_up)
        level3 = torch.cat([x, ctx], dim=1)
        out.append(self.extra_norm[2](level3) if self.dense else level3)
        if last == 2:
            return out
        x, ctx = self.patch_embedx(x, ctx)
        for i, blk in enumerate(self.sub_blocks4):
            x, ctx = self._call(4, i, blk, x, ctx, ctx_prior)
        if self.dense:
            x = self.extra_norm[3](x) + self.h_proj(self.extra_norm[4](overview))
            out.append(x)
        else:
            out.extend([x, overview])
        return out

    def forward_features_with_context(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Focus-Net output (B, num_features, H/32, W/32) and Overview-Net output (B, dim4, H/32, W/32)."""
        if self.dense:
            raise RuntimeError("the dense backbone returns a pyramid; use forward() or forward_intermediates()")
        focus, overview = self._levels(x)[-2:]
        return focus, overview

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled Focus-Net features (the last pyramid level for the dense backbone)."""
        return self._levels(x)[3]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Main head: 1x1 projection, BN, SiLU, global pool, (dropout), classifier."""
        x = self.head[3](self.head[2](self.head[1](self.head[0](x))))
        pooled = self.global_pool != ""
        if pooled:
            x = x.flatten(1)
        if pre_logits:
            return x
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        if pooled:
            return self.head[4](x[:, :, None, None]).flatten(1)
        return self.head[4](x)

    def forward_aux_head(self, overview: Tensor) -> Tensor:
        """Auxiliary head on the Overview-Net output: BN, global average pool, classifier."""
        return self.aux_head(overview).flatten(1)

    def forward(self, x: Tensor) -> Tensor | OverLoCKOutput | list[Tensor]:
        """Logits in eval mode; ``OverLoCKOutput(main, aux)`` in train mode when the auxiliary head
        exists; the four-level pyramid for the dense backbone."""
        if self.dense:
            return self._levels(x)
        focus, overview = self.forward_features_with_context(x)
        logits = self.forward_head(focus)
        if self.training and hasattr(self, "aux_head"):
            aux = self.forward_aux_head(overview)
            if is_fx_symbolic_tracing():  # keep both heads visible as graph outputs to torch.fx
                return logits, aux
            return OverLoCKOutput(logits, aux)
        return logits

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Pyramid levels selected by ``indices`` (strides 4, 8, 16, 32), and the final features.

        ``norm`` is accepted for timm compatibility: the dense backbone always normalises its
        levels and the classification model has no final norm.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"OverLoCK produces NCHW features, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = max_index if (stop_early or intermediates_only) else 3
        levels = self._levels(x, last)
        intermediates = [levels[i] for i in take]
        if intermediates_only:
            return intermediates
        return levels[last], intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the heads (and everything past the last wanted level when it is below stride 16)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if prune_head and not self.dense:
            self.reset_classifier(0, "")
            if hasattr(self, "aux_head"):
                del self.aux_head
        if max_index < 2:
            for name in ("patch_embed3", "patch_embed4", "high_level_proj", "patch_embedx"):
                setattr(self, name, nn.Identity())
            for name in ("blocks3", "blocks4", "sub_blocks3", "sub_blocks4"):
                setattr(self, name, nn.ModuleList())
            if max_index < 1:
                self.patch_embed2, self.blocks2 = nn.Identity(), nn.ModuleList()
        return take


def _pool(global_pool: str) -> nn.Module:
    if global_pool == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if global_pool == "max":
        return nn.AdaptiveMaxPool2d(1)
    if global_pool == "":
        return nn.Identity()
    raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")


def _classifier(in_dim: int, num_classes: int) -> nn.Module:
    return nn.Conv2d(in_dim, num_classes, 1) if num_classes > 0 else nn.Identity()


# ---------------------------------------------------------------------- checkpoint filter
_CLASSIFIER_PREFIXES = ("head.4.", "aux_head.2.")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_DENSE_ONLY_PREFIXES = ("extra_norm.", "h_proj.")


def unwrap_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The weights inside a checkpoint, whatever its wrapper (EMA first), with prefixes of
    distributed wrappers and of detection/segmentation models (``backbone.``) removed."""
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = {k.removeprefix("module."): v for k, v in checkpoint.items() if torch.is_tensor(v)}
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    return state_dict


def _summarise(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def checkpoint_filter_fn(state_dict: dict[str, Any], model: OverLoCK) -> dict[str, Tensor]:
    """Fit an official (or our own) checkpoint to ``model`` and check that it fits exactly.

    Accepts bare state dicts or ones under ``state_dict``/``model``/``state_dict_ema``, and the
    ``backbone.`` part of official Mask R-CNN / UperNet checkpoints. An ImageNet checkpoint loaded
    into the dense backbone keeps the backbone's fresh extra norms and fusion (as the official
    detection training does). Classifier weights are left for timm to adapt. Raises
    ``CheckpointMismatchError`` listing missing, unexpected and mis-shaped keys.
    """
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    if model.dense:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "aux_head."))}
        if not any(k.startswith(_DENSE_ONLY_PREFIXES) for k in state_dict):
            _logger.info("classification checkpoint: dense-backbone norms and fusion keep their initial values")
            state_dict.update({k: v for k, v in target.items() if k.startswith(_DENSE_ONLY_PREFIXES)})
    elif not hasattr(model, "aux_head"):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("aux_head.")}

    def fits(key: str) -> bool:
        return not key.startswith(_CLASSIFIER_PREFIXES)

    missing = {k for k in target if k not in state_dict and fits(k)}
    unexpected = {k for k in state_dict if k not in target and fits(k)}
    mis_shaped = {
        f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and fits(k) and v.shape != target[k].shape
    }
    if missing or unexpected or mis_shaped:
        lines = ["checkpoint does not fit the model"]
        if missing:
            lines.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            lines.append(f"unexpected keys: {_summarise(unexpected)}")
        if mis_shaped:
            lines.append(f"shape mismatches: {_summarise(mis_shaped, limit=6)}")
        if any(".origin_bn." in k or ".dil_conv_" in k for k in unexpected):
            lines.append("hint: this is a training-form checkpoint; load it into the variant without '_reparam'")
        elif any(".origin_bn." in k or ".dil_conv_" in k for k in missing):
            lines.append("hint: this is a re-parameterised checkpoint; load it into the '_reparam' variant")
        elif any(k.startswith(_DENSE_ONLY_PREFIXES) for k in unexpected):
            lines.append("hint: this is a dense-backbone checkpoint; create the model with features_only=True")
        raise CheckpointMismatchError("\n  ".join(lines))
    return state_dict


# ---------------------------------------------------------------------- builders and configs
def _check_pretrained_file(kwargs: dict[str, Any]) -> None:
    """Clear errors for a missing or unreadable ``pretrained_cfg_overlay['file']`` before timm loads it."""
    path = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if not path:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if str(path).endswith(".safetensors"):
        return
    with open(path, "rb") as f:
        legacy = f.read(2) == b"\x80\x02"  # pre-1.6 torch.save pickle
    if not legacy and not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read checkpoint file {path}: not a PyTorch checkpoint (truncated or corrupt?)")


def _create_overlock(variant: str, pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    if kwargs.get("features_only", False):
        kwargs["dense"] = True
    if pretrained:
        _check_pretrained_file(kwargs)
    return build_model_with_cfg(
        OverLoCK,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


_RELEASE = "https://github.com/LMMMEng/OverLoCK/releases/download/v1/"


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.0",
        "classifier": ("head.4", "aux_head.2"),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2502.20087",
        **kwargs,
    }


_CROP_PCT = {"xt": 0.925, "t": 0.95, "s": 0.95, "b": 0.975}

default_cfgs = generate_default_cfgs(
    {
        **{
            f"overlock_{v}.in1k": _cfg(url=f"{_RELEASE}overlock_{v}_in1k_224.pth", crop_pct=crop)
            for v, crop in _CROP_PCT.items()
        },
        **{
            f"overlock_{v}_reparam.in1k": _cfg(url=f"{_RELEASE}overlock_{v}_in1k_224_reparam.pth", crop_pct=crop)
            for v, crop in _CROP_PCT.items()
        },
        "test_overlock.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=0.95),
    }
)

# variant name -> architecture (official variant tables)
MODEL_ARGS: dict[str, dict[str, Any]] = {
    "overlock_xt": dict(
        depths=(2, 2, 3, 2), sub_depths=(6, 2), embed_dims=(56, 112, 256, 336), sub_num_heads=(4, 6)
    ),
    "overlock_t": dict(
        depths=(4, 4, 6, 2), sub_depths=(12, 2), embed_dims=(64, 128, 256, 512), sub_num_heads=(4, 8)
    ),
    "overlock_s": dict(
        depths=(6, 6, 8, 3), sub_depths=(16, 3), embed_dims=(64, 128, 320, 512), sub_num_heads=(8, 16)
    ),
    "overlock_b": dict(
        depths=(8, 8, 10, 4), sub_depths=(20, 4), embed_dims=(80, 160, 384, 576), sub_num_heads=(6, 9)
    ),
    "test_overlock": dict(
        depths=(1, 1, 1, 1), sub_depths=(2, 2), embed_dims=(16, 32, 64, 96), sub_num_heads=(2, 3), projection=64
    ),
}


def _variant(name: str, pretrained: bool, deploy: bool = False, **kwargs: Any) -> OverLoCK:
    arch = name.removesuffix("_reparam")
    return _create_overlock(name, pretrained=pretrained, **dict(MODEL_ARGS[arch], deploy=deploy, **kwargs))


@register_model
def overlock_xt(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-XT: 16 M params, 2.6 GMACs, 82.7% ImageNet-1k top-1."""
    return _variant("overlock_xt", pretrained, **kwargs)


@register_model
def overlock_t(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-T: 33 M params, 5.5 GMACs, 84.2% ImageNet-1k top-1."""
    return _variant("overlock_t", pretrained, **kwargs)


@register_model
def overlock_s(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-S: 56 M params, 9.7 GMACs, 84.8% ImageNet-1k top-1."""
    return _variant("overlock_s", pretrained, **kwargs)


@register_model
def overlock_b(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-B: 95 M params, 16.7 GMACs, 85.1% ImageNet-1k top-1."""
    return _variant("overlock_b", pretrained, **kwargs)


@register_model
def overlock_xt_reparam(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-XT in deploy form (every Dilated RepConv merged)."""
    return _variant("overlock_xt_reparam", pretrained, deploy=True, **kwargs)


@register_model
def overlock_t_reparam(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-T in deploy form (every Dilated RepConv merged)."""
    return _variant("overlock_t_reparam", pretrained, deploy=True, **kwargs)


@register_model
def overlock_s_reparam(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-S in deploy form (every Dilated RepConv merged)."""
    return _variant("overlock_s_reparam", pretrained, deploy=True, **kwargs)


@register_model
def overlock_b_reparam(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """OverLoCK-B in deploy form (every Dilated RepConv merged)."""
    return _variant("overlock_b_reparam", pretrained, deploy=True, **kwargs)


@register_model
def test_overlock(pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    """A tiny OverLoCK (official kernel sizes, narrow and shallow) for fast tests."""
    return _variant("test_overlock", pretrained, **kwargs)
