"""OverLoCK: an Overview-first, Look-Closely-next ConvNet with context-mixing dynamic kernels.

Paper: "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels",
Meng Lou and Yizhou Yu, CVPR 2025 (https://arxiv.org/abs/2502.20087).

The network is a Base-Net (stem, stages 1-3 of Dilated RepConv blocks), an Overview-Net (stage 4, stride 32)
whose output is projected into a coarse context prior, and a Focus-Net (ContMix blocks at strides 16 and 32)
that carries the context channels along and is guided by the prior in every block. Module and parameter names
follow the official implementation, so that its checkpoints load as they are.
"""

import logging
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from ..layers import (
    ContextDownsample, ContMixBlock, DynamicConvBlock, LayerNorm2d, LayerScale, RepConvBlock, conv_bn, stem,
)
from ..weights_file import check_checkpoint_file

__all__ = ["OverLoCK", "CheckpointMismatchError", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

MIN_INPUT_SIZE = 32
DENSE_FORMS = ("detection", "segmentation")
OUTPUT_STRIDES = (8, 16, 32)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model."""


@register_notrace_function  # checks shape values: a leaf function for fx
def check_image_batch(x: Tensor, in_chans: int, min_size: int = MIN_INPUT_SIZE) -> None:
    """Clear errors for inputs the model cannot take."""
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D (B, C, H, W) image batch, got shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {list(x.shape)})")
    if min(x.shape[-2], x.shape[-1]) < min_size:
        raise ValueError(f"input must be at least {min_size}x{min_size}, got {list(x.shape[-2:])}")


@register_notrace_function  # reads a shape: a leaf function for fx
def resize_like(x: Tensor, reference: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``reference`` (the context prior to stride 16)."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


@register_notrace_function  # reads a shape: a leaf function for fx
def zero_context(x: Tensor, channels: int) -> Tensor:
    """Zeros of ``channels`` channels at the batch size, size, dtype and device of ``x``: the Focus-Net's context
    channels where no prior feeds them."""
    return x.new_zeros((x.shape[0], channels, x.shape[2], x.shape[3]))


torch.fx.wrap("check_image_batch")
torch.fx.wrap("resize_like")
torch.fx.wrap("zero_context")


class StageGeometry(NamedTuple):
    """Where a stage runs: the stride of its maps, the dilation of its spatial kernels, and the stride and dilation
    of the layer that enters it (its downsampling conv)."""

    reduction: int
    dilation: int
    entry_stride: int
    entry_dilation: int


def stage_geometry(output_stride: int = 32) -> List[StageGeometry]:
    """Stages 1-4 of a network whose deepest maps stay at ``output_stride`` (8, 16 or 32).

    As timm defines ``output_stride`` for its backbones: a downsampling layer that would take the maps past it runs
    at stride 1 instead (with the dilation of the stage before it), and every spatial kernel after it is dilated by
    the stride given up, so that each kernel still spans the same part of the image.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    stages = [StageGeometry(4, 1, 4, 1)]
    for _ in range(3):
        prev = stages[-1]
        if prev.reduction * 2 <= output_stride:
            stages.append(StageGeometry(prev.reduction * 2, prev.dilation, 2, prev.dilation))
        else:
            stages.append(StageGeometry(prev.reduction, prev.dilation * 2, 1, prev.dilation))
    return stages


# ---------------------------------------------------------------------- stages
class RepConvStage(nn.Sequential):
    """A Base-Net or Overview-Net stage: ``RepConvBlock``s in sequence (the official ``blocks{1-4}``).

    ``checkpoint_blocks`` leading blocks are recomputed in the backward pass (gradient checkpointing).
    """

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.checkpoint_blocks = 0

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self):
            if i < self.checkpoint_blocks and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        return x


class PrunedDownsample(nn.Module):
    """Takes the place of the Focus-Net downsampling in a feature extractor pruned below stride 16, where it never
    runs; it keeps the two-tensor signature, so the pruned model still scripts."""

    def forward(self, x: Tensor, ctx: Tensor) -> Tuple[Tensor, Tensor]:
        return x, ctx


class FocusStage(nn.ModuleList):
    """A Focus-Net stage: ``DynamicConvBlock``s guided by the context prior (the official ``sub_blocks{3,4}``).

    Takes the features, the context channels and the prior; returns the last block's map, features and context
    channels together. ``checkpoint_blocks`` leading blocks are recomputed in the backward pass.
    """

    def __init__(self, blocks: Iterable[nn.Module], dim: int, ctx_dim: int):
        super().__init__(blocks)
        self.dim, self.ctx_dim = dim, ctx_dim
        self.checkpoint_blocks = 0

    def forward(self, x: Tensor, ctx: Tensor, ctx_prior: Tensor) -> Tensor:
        out = torch.cat([x, ctx], dim=1)
        for i, block in enumerate(self):
            if i < self.checkpoint_blocks and not torch.jit.is_scripting():
                out = checkpoint(block, x, ctx, ctx_prior)
            else:
                out = block(x, ctx, ctx_prior)
            parts = out.split([self.dim, self.ctx_dim], dim=1)
            x, ctx = parts[0], parts[1]
        return out


class TopDownFeedback(nn.Module):
    """The recurrent model's top-down path (Table 6's Recurrent Model): the first pass's stage-4 output projected
    to the context width (``proj``), then, in the second pass, joined to the input of stages 3 and 4 by a 1x1 conv
    each (``fuse3``, ``fuse4``; the feedback resized to the stage first).

    Joining is a concatenation of the stage's input and the feedback followed by a 1x1 conv whose feature part is
    the identity: the features plus the fused feedback. A pass without feedback is therefore the plain network's
    pass, which is what the first pass is.
    """

    def __init__(self, top_dim: int, ctx_dim: int, stage_dims: Tuple[int, int], **dd: Any):
        super().__init__()
        self.proj = nn.Conv2d(top_dim, ctx_dim, 1, **dd)
        self.fuse3 = nn.Conv2d(ctx_dim, stage_dims[0], 1, bias=False, **dd)
        self.fuse4 = nn.Conv2d(ctx_dim, stage_dims[1], 1, bias=False, **dd)


# ---------------------------------------------------------------------- model
class OverLoCK(nn.Module):
    """OverLoCK classification model, or one of its dense-prediction backbones (``dense_form``).

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
        in_chans: input channels.
        num_classes: classes of both heads (0: no classifiers).
        global_pool: 'avg', 'max' or '' (no pooling) in the main head.
        drop_rate: dropout before the main classifier.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        deploy: build every Dilated RepConv already merged (the ``_reparam`` variants).
        with_aux_head: keep the Overview-Net auxiliary classifier (used for the training loss).
        dense_form: None for the classifier, or a dense-prediction backbone whose forward returns the stride
            4-32 pyramid with a LayerNorm on every level: 'detection' (the official Mask R-CNN backbone, which also
            fuses the Overview-Net output into stage 4) or 'segmentation' (the official UperNet backbone, without
            that fusion).
        output_stride: stride of the deepest maps, 32 (the network as published), 16 or 8: the downsampling
            layers past it run at stride 1 and the spatial kernels after them, ContMix's dynamic kernels included,
            are dilated instead (see ``stage_geometry``; the parameters are the same, so any checkpoint loads).
        contmix_backend: the ContMix kernel application's backend ('auto', 'reference', 'cpu', 'triton').
        ctx_reduction: the context channels are ``embed_dims[3] // ctx_reduction`` (the paper's channel reduction
            factor, 4).
        overview_net: False builds the plain hierarchical network of the ablations instead of the decomposition:
            no Overview-Net and no context; stages 3 and 4 run ``depths`` RepConv blocks followed by
            ``sub_depths`` plug-and-play ContMix blocks (kernels from their own input), and the head takes stage 4.
        feedback: with ``overview_net=False``, the recurrent model of the ablations: stages 3 and 4 run twice with
            the same weights, the second time with top-down feedback from the first pass's stage-4 output (see
            ``TopDownFeedback``); the pyramid and the head take the second pass.
        feature_feed: False leaves the Overview-Net's context prior out of the Focus-Net's feature path: the
            context channels the Focus-Net carries start from zeros, and the Overview-Net, then unused, is not
            built (``depths[3]`` is unused; needs ``reinject_prior=False`` in ``focus_block_kwargs``).
        block_kwargs: switches of every ``RepConvBlock`` (the ablations: ``rep_conv``, ``se``, ``res_dwconv``,
            ``conv_ffn``).
        focus_block_kwargs: switches of every Focus-Net ``DynamicConvBlock`` (``dynamic``, ``gate``,
            ``reinject_prior``, ``affinity``, ``rep_conv``, ``small_kernel``, ``softmax``).
        device, dtype: where and in which dtype to create the parameters.
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
        ls_init_values: Sequence[Optional[float]] = (None, None, 1, 1),
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
        dense_form: Optional[str] = None,
        output_stride: int = 32,
        contmix_backend: str = "auto",
        ctx_reduction: int = 4,
        overview_net: bool = True,
        feedback: bool = False,
        feature_feed: bool = True,
        block_kwargs: Optional[dict[str, Any]] = None,
        focus_block_kwargs: Optional[dict[str, Any]] = None,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dense_form is not None and dense_form not in DENSE_FORMS:
            raise ValueError(f"dense_form must be None or one of {DENSE_FORMS}, got {dense_form!r}")
        if not overview_net and output_stride != 32 and any(sub_depths):
            raise ValueError("the hierarchical network's ContMix blocks run at output_stride 32 only")
        block_kwargs = dict(block_kwargs or {})
        focus_block_kwargs = dict(focus_block_kwargs or {})
        if feedback and overview_net:
            raise ValueError("feedback=True runs the hierarchical network twice; it needs overview_net=False")
        if not feature_feed and not overview_net:
            raise ValueError("feature_feed=False removes the prior from the Focus-Net; it needs overview_net=True")
        if not feature_feed and focus_block_kwargs.get("reinject_prior", True):
            raise ValueError("feature_feed=False leaves no prior to re-inject; set reinject_prior=False in "
                             "focus_block_kwargs")
        d1, d2, d3, d4 = embed_dims
        ctx_dim = d4 // ctx_reduction if overview_net else 0
        builds_overview = overview_net and feature_feed  # the Overview-Net: patch_embed4, blocks4, high_level_proj
        geometry = stage_geometry(output_stride)
        self.in_chans = in_chans
        self.dense_form = dense_form
        self.output_stride = output_stride
        self.drop_rate = drop_rate
        self.embed_dims = tuple(embed_dims)
        self.ctx_dim = ctx_dim
        self.num_features = d4 + ctx_dim
        self.head_hidden_size = projection
        self.feature_info = [
            dict(num_chs=chs, reduction=g.reduction, module=module)
            for chs, g, module in zip(
                (d1, d2, d3 + ctx_dim, d4 + ctx_dim), geometry,
                ("blocks1", "blocks2", "sub_blocks3", "sub_blocks4") if overview_net else
                ("blocks1", "blocks2", "blocks3", "blocks4"),
            )
        ]
        self.num_levels = len(self.feature_info)  # an int TorchScript reads in forward_intermediates

        depths = tuple(depths[:3]) + (depths[3] if builds_overview or not overview_net else 0,)
        num_blocks = sum(depths) + sum(sub_depths)
        dpr = iter(torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist())

        # Base-Net: stem, stages 1-3; Overview-Net: stage 4 and the context projection
        def entry(in_dim: int, out_dim: int, stage: StageGeometry) -> nn.Module:
            return conv_bn(in_dim, out_dim, 3, stride=stage.entry_stride, dilation=stage.entry_dilation, **dd)

        self.patch_embed1 = stem(in_chans, d1, **dd)
        self.patch_embed2 = entry(d1, d2, geometry[1])
        self.patch_embed3 = entry(d2, d3, geometry[2])
        self.patch_embed4 = entry(d3, d4, geometry[3]) if builds_overview or not overview_net else None
        self.high_level_proj = nn.Conv2d(d4, ctx_dim, 1, **dd) if builds_overview else None
        self.patch_embedx = ContextDownsample(
            d3, d4, ctx_dim, stride=geometry[3].entry_stride, dilation=geometry[3].entry_dilation, **dd
        ) if overview_net else None
        self.feedback = TopDownFeedback(d4, d4 // ctx_reduction, (d3, d4), **dd) if feedback else None
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks: List[nn.Module] = [
                RepConvBlock(
                    dim, kernel_size=kernel_sizes[i], mlp_ratio=mlp_ratios[i], ls_init_value=ls_init_values[i],
                    res_scale=res_scale, drop_path=next(dpr), deploy=deploy, dilation=geometry[i].dilation,
                    **block_kwargs, **dd,
                )
                for _ in range(depth)
            ]
            if not overview_net and i >= 2:  # the hierarchical network's ContMix blocks close stages 3 and 4
                blocks += [
                    ContMixBlock(
                        dim, kernel_size=kernel_sizes[i], smk_size=smk_size, num_heads=sub_num_heads[i - 2],
                        mlp_ratio=sub_mlp_ratios[i - 2], res_scale=res_scale, ls_init_value=ls_init_values[i],
                        drop_path=next(dpr), deploy=deploy, backend=contmix_backend, **dd,
                    )
                    for _ in range(sub_depths[i - 2])
                ]
            self.add_module(f"blocks{i + 1}", RepConvStage(*blocks))

        # Focus-Net: context-guided ContMix blocks at stride 16 and 32
        if not overview_net:
            self.sub_blocks3, self.sub_blocks4 = None, None
        for j, (stage_index, depth) in enumerate(zip((2, 3) if overview_net else (), sub_depths)):
            dim = embed_dims[stage_index]
            blocks = [
                DynamicConvBlock(
                    dim, ctx_dim, kernel_size=kernel_sizes[stage_index], smk_size=smk_size,
                    num_heads=sub_num_heads[j], mlp_ratio=sub_mlp_ratios[j],
                    ls_init_value=ls_init_values[stage_index], res_scale=res_scale, drop_path=next(dpr),
                    is_first=(j == 0 and k == 0), deploy=deploy, contmix_backend=contmix_backend,
                    dilation=geometry[stage_index].dilation, **focus_block_kwargs, **dd,
                )
                for k in range(depth)
            ]
            self.add_module(f"sub_blocks{stage_index + 1}", FocusStage(blocks, dim, ctx_dim))

        self.global_pool = global_pool
        if dense_form is None:
            self.num_classes = num_classes
            self.extra_norm = None
            self.h_proj = None
            self.aux_head = (
                nn.Sequential(nn.BatchNorm2d(d4, **dd), nn.AdaptiveAvgPool2d(1), _classifier(d4, num_classes, **dd))
                if with_aux_head and builds_overview else None
            )
            self.head = nn.Sequential(
                nn.Conv2d(self.num_features, projection, 1, bias=False, **dd),
                nn.BatchNorm2d(projection, **dd),
                nn.SiLU(),
                _pool(global_pool),
                _classifier(projection, num_classes, **dd),
            )
        else:
            self.num_classes = 0
            self.aux_head = None
            self.head = None
            norms = [LayerNorm2d(info["num_chs"], **dd) for info in self.feature_info]
            if dense_form == "detection" and builds_overview:  # the Overview-Net output fused into stage 4
                self.h_proj = nn.Sequential(nn.Conv2d(d4, d4 + ctx_dim, 1, **dd), LayerScale(d4 + ctx_dim, 1e-5, **dd))
                norms.append(LayerNorm2d(d4, **dd))
            else:
                self.h_proj = None
            self.extra_norm = nn.ModuleList(norms)
        self.apply(_init_weights)

    # ------------------------------------------------------------------ timm model API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups in the order of the network's depth: stem, Base-Net and Overview-Net stages,
        Focus-Net stages; the heads last."""
        if coarse:
            return dict(
                stem=r"^patch_embed1\.",
                blocks=[(r"^(?:patch_embed|blocks)(\d)\.", None), (r"^(?:high_level_proj|feedback)\.", (4,))],
                focus=[(r"^(?:sub_blocks3|patch_embedx)\.", (3,)), (r"^sub_blocks4\.", (4,))],
            )
        return dict(
            stem=r"^patch_embed1\.",
            blocks=[
                (r"^patch_embed(\d)\.", (0,)),
                (r"^blocks(\d)\.(\d+)\.", None),
                (r"^(?:high_level_proj|feedback)\.", (4, 99999)),
            ],
            focus=[(r"^sub_blocks(\d)\.(\d+)\.", None), (r"^patch_embedx\.", (4, 0))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: Union[bool, Sequence[Union[int, bool]]] = True) -> None:
        """Recompute blocks in the backward pass to save memory.

        ``enable`` is a bool for every stage, or four per-stage values (True/False, or how many of the stage's
        leading blocks to checkpoint, as the official ``use_checkpoint`` list). Stage 3 and 4 values also cover
        the Focus-Net blocks at the same stride.
        """
        values = [enable] * 4 if isinstance(enable, bool) else list(enable)
        if len(values) != 4:
            raise ValueError(f"expected a bool or 4 per-stage values, got {enable!r}")
        counts = [10**9 if v is True else int(v) for v in values]
        for name, count in zip(("blocks1", "blocks2", "blocks3", "blocks4"), counts):
            getattr(self, name).checkpoint_blocks = count
        if self.sub_blocks3 is not None and self.sub_blocks4 is not None:
            self.sub_blocks3.checkpoint_blocks, self.sub_blocks4.checkpoint_blocks = counts[2], counts[3]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        if self.head is None:
            raise RuntimeError("the dense backbone has no classifier")
        return self.head[4]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace both classifiers (main and auxiliary) for ``num_classes`` (0 removes them)."""
        if self.head is None:
            raise RuntimeError("the dense backbone has no classifier")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.head[3] = _pool(global_pool)
        ref = self.head[0].weight
        dd = dict(device=ref.device, dtype=ref.dtype)
        self.head[4] = _classifier(self.head_hidden_size, num_classes, **dd).train(self.training)
        if self.aux_head is not None:
            aux = _classifier(self.aux_head[0].num_features, num_classes, **dd).train(self.training)
            self.aux_head[2] = aux
        for head in (self.head[4], self.aux_head[2] if self.aux_head is not None else None):
            if head is not None:
                head.apply(_init_weights)
                head.requires_grad_(ref.requires_grad)

    @torch.no_grad()
    def reparameterize(self) -> "OverLoCK":
        """Merge every Dilated RepConv in place: the model becomes its ``_reparam`` (deploy) form."""
        for m in self.modules():
            if hasattr(m, "reparameterize") and m is not self:
                m.reparameterize()
        return self

    # ------------------------------------------------------------------ the three sub-networks
    def forward_base(self, x: Tensor, last: int = 2) -> List[Tensor]:
        """Base-Net: stem and stages 1-3; the stride-4, -8 and -16 maps (up to level ``last``).

        The dense backbones feed the stride-8 map on after its LayerNorm, as the official ones do.
        """
        x = self.blocks1(self.patch_embed1(x))
        levels = [x]
        if last >= 1:
            x = self.blocks2(self.patch_embed2(x))
            if self.extra_norm is not None:
                x = self.extra_norm[1](x)
            levels.append(x)
        if last >= 2:
            levels.append(self.blocks3(self.patch_embed3(x)))
        return levels

    def forward_overview(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Overview-Net: stage 4 on the stride-16 map; its output and the context prior projected from it."""
        overview = self.blocks4(self.patch_embed4(x))
        return overview, self.high_level_proj(overview)

    def forward_focus(self, x: Tensor, ctx_prior: Tensor, last: int = 3) -> List[Tensor]:
        """Focus-Net: ContMix blocks guided by the context prior, at stride 16, then 32 (up to level ``last``).

        Returns the stride-16 and stride-32 maps, each features and context channels together.
        """
        prior_up = resize_like(ctx_prior, x)
        out = self.sub_blocks3(x, prior_up, prior_up)
        levels = [out]
        if last >= 3:
            parts = out.split([self.embed_dims[2], self.ctx_dim], dim=1)
            x, ctx = self.patch_embedx(parts[0], parts[1])
            levels.append(self.sub_blocks4(x, ctx, ctx_prior))
        return levels

    def forward_second_pass(self, x: Tensor, feedback: Tensor, last: int = 3) -> List[Tensor]:
        """The recurrent model's second pass of stages 3 and 4 (up to level ``last``) from the stride-8 map ``x``,
        each stage's input joined with ``feedback``, the first pass's projected stage-4 output."""
        assert self.feedback is not None
        x = self.patch_embed3(x)
        levels = [self.blocks3(x + self.feedback.fuse3(resize_like(feedback, x)))]
        if last >= 3:
            x = self.patch_embed4(levels[0])
            levels.append(self.blocks4(x + self.feedback.fuse4(feedback)))  # both passes' stage 4 match in size
        return levels

    def forward_pyramid(self, x: Tensor, last: int = 3) -> Tuple[List[Tensor], Optional[Tensor]]:
        """Pyramid levels 0..``last`` (strides 4-32) as the model outputs them, and the Overview-Net output
        (None when ``last`` < 2 or the model has no Overview-Net)."""
        check_image_batch(x, self.in_chans)
        levels = self.forward_base(x, last)
        overview: Optional[Tensor] = None
        if self.sub_blocks3 is None:  # the hierarchical network of the ablations: stage 4 on stage 3
            if self.feedback is not None and last >= 2:  # the recurrent model: stages 3-4 again, with feedback
                top = self.blocks4(self.patch_embed4(levels[2]))
                levels = levels[:2] + self.forward_second_pass(levels[1], self.feedback.proj(top), last)
            elif last >= 3:
                levels.append(self.blocks4(self.patch_embed4(levels[2])))
        elif last >= 2:
            if self.high_level_proj is None:  # no feature feed: the context channels start from zeros
                ctx_prior = zero_context(levels[2], self.ctx_dim)
            else:
                overview, ctx_prior = self.forward_overview(levels[2])
            levels = levels[:2] + self.forward_focus(levels[2], ctx_prior, last)
        if self.extra_norm is not None:
            levels = self._normed_levels(levels, overview)
        return levels, overview

    def _normed_levels(self, levels: List[Tensor], overview: Optional[Tensor]) -> List[Tensor]:
        """The dense backbones' outputs: each level after its LayerNorm (stride 8 is normed on the way already),
        the detection form adding the projected Overview-Net output to stride 32."""
        assert self.extra_norm is not None
        out = [self.extra_norm[0](levels[0])] + levels[1:2]
        if len(levels) > 2:
            out.append(self.extra_norm[2](levels[2]))
        if len(levels) > 3:
            top = self.extra_norm[3](levels[3])
            if self.h_proj is not None and overview is not None:
                top = top + self.h_proj(self.extra_norm[4](overview))
            out.append(top)
        return out

    # ------------------------------------------------------------------ forward
    def forward_features_with_context(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Focus-Net output (B, num_features, H/32, W/32) and Overview-Net output (B, dim4, H/32, W/32)."""
        levels, overview = self.forward_pyramid(x)
        assert overview is not None
        return levels[3], overview

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled Focus-Net features (the last pyramid level for a dense backbone)."""
        return self.forward_pyramid(x)[0][3]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Main head: 1x1 projection, BN, SiLU, global pool, (dropout), classifier."""
        if self.head is None:
            raise RuntimeError("the dense backbone has no classifier head")
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
        if self.aux_head is None:
            raise RuntimeError("this model has no auxiliary head")
        return self.aux_head(overview).flatten(1)

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor], List[Tensor]]:
        """Logits in eval mode; the pair ``(main, aux)`` of the main and auxiliary heads' logits in train mode when
        the auxiliary head exists (a plain tuple, as timm's models with a second head return it); the four-level
        pyramid for a dense backbone."""
        levels, overview = self.forward_pyramid(x)
        if self.head is None:
            return levels
        logits = self.forward_head(levels[3])
        if self.training and self.aux_head is not None and overview is not None:
            return logits, self.forward_aux_head(overview)
        return logits

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Pyramid levels selected by ``indices`` (strides 4, 8, 16, 32), and the final features.

        ``norm`` is accepted for timm compatibility: the dense backbones always normalise their levels and the
        classifier has no final norm.
        """
        if output_fmt != "NCHW":
            raise ValueError("OverLoCK produces NCHW features, got output_fmt=" + output_fmt)
        take, max_index = feature_take_indices(self.num_levels, indices)
        last = max_index if (stop_early or intermediates_only) else 3
        levels, _ = self.forward_pyramid(x, last)
        intermediates = [levels[i] for i in take]
        if intermediates_only:
            return intermediates
        return levels[last], intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the heads (and the stages past the last wanted level when it is below stride 16)."""
        take, max_index = feature_take_indices(self.num_levels, indices)
        if prune_head and self.head is not None:
            self.reset_classifier(0, "")
            self.aux_head = None
        if max_index < 2:
            for name in ("patch_embed3", "patch_embed4", "high_level_proj"):
                setattr(self, name, nn.Identity())
            self.feedback = None
            self.patch_embedx = PrunedDownsample()
            for name in ("blocks3", "blocks4"):
                setattr(self, name, RepConvStage())
            for name in ("sub_blocks3", "sub_blocks4"):
                setattr(self, name, FocusStage([], 0, 0))
            if max_index < 1:
                self.patch_embed2, self.blocks2 = nn.Identity(), RepConvStage()
        return take


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _pool(global_pool: str) -> nn.Module:
    if global_pool == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if global_pool == "max":
        return nn.AdaptiveMaxPool2d(1)
    if global_pool == "":
        return nn.Identity()
    raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")


def _classifier(in_dim: int, num_classes: int, **dd: Any) -> nn.Module:
    return nn.Conv2d(in_dim, num_classes, 1, **dd) if num_classes > 0 else nn.Identity()


# ---------------------------------------------------------------------- checkpoint filter
_CLASSIFIER_PREFIXES = ("head.4.", "aux_head.2.")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_DENSE_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")  # mmdet/mmseg keep the weights under state_dict
# the official constructor's argument names (its mmdet/mmseg configs) -> ours
OFFICIAL_ARG_NAMES = {
    "depth": "depths", "sub_depth": "sub_depths", "embed_dim": "embed_dims", "kernel_size": "kernel_sizes",
    "mlp_ratio": "mlp_ratios", "sub_mlp_ratio": "sub_mlp_ratios", "sub_num_heads": "sub_num_heads",
    "ls_init_value": "ls_init_values", "res_scale": "res_scale", "smk_size": "smk_size",
    "drop_path_rate": "drop_path_rate", "deploy": "deploy", "in_chans": "in_chans",
}
_DENSE_ONLY_PREFIXES = ("extra_norm.", "h_proj.")


def official_backbone(backbone_config: dict[str, Any]) -> Tuple[str, dict[str, Any]]:
    """The model name and our constructor arguments for the ``backbone`` dict of an official mmdet/mmseg config: a
    registered variant (``type='overlock_t'``) or the ``OverLoCK`` class with every argument given; an argument this
    implementation does not know is a one-line error."""
    backbone = dict(backbone_config)
    kind = backbone.pop("type")
    backbone.pop("pretrained", None)
    unknown = set(backbone) - set(OFFICIAL_ARG_NAMES)
    if unknown:
        raise ValueError(f"backbone arguments this implementation does not know: {', '.join(sorted(unknown))}")
    name = kind if kind.startswith("overlock_") else "overlock_t"  # the class: every architecture argument given
    return name, {OFFICIAL_ARG_NAMES[k]: v for k, v in backbone.items()}


def _unwrapped(checkpoint: Any, wrappers: Sequence[str]) -> dict[str, Tensor]:
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in wrappers:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if torch.is_tensor(v)}


def dense_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """The weights of a whole dense model's checkpoint (UperNet, Mask R-CNN): mmseg's or mmdet's (under
    ``state_dict``, beside ``meta``), a bare state dict or one under ``model``; prefixes of distributed wrappers
    removed, the ``backbone.`` prefix kept."""
    return _unwrapped(checkpoint, _DENSE_WRAPPER_KEYS)


def unwrap_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The weights inside a checkpoint, whatever its wrapper (EMA first), with prefixes of distributed wrappers
    and of detection/segmentation models (``backbone.``) removed."""
    state_dict = _unwrapped(checkpoint, _WRAPPER_KEYS)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    return state_dict


def _summarise(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def mismatch_report(title: str, missing: set[str], unexpected: set[str], mis_shaped: set[str]) -> List[str]:
    """The lines of a checkpoint-mismatch error: the title, then the missing, unexpected and mis-shaped keys."""
    lines = [title]
    if missing:
        lines.append(f"missing keys: {_summarise(missing)}")
    if unexpected:
        lines.append(f"unexpected keys: {_summarise(unexpected)}")
    if mis_shaped:
        lines.append(f"shape mismatches: {_summarise(mis_shaped, limit=6)}")
    return lines


def _form_hint(missing: set[str], unexpected: set[str]) -> Optional[str]:
    """What the checkpoint is, when its keys say it is another form of the model."""
    def dilated(keys: set[str]) -> bool:
        return any(".origin_bn." in k or ".dil_conv_" in k for k in keys)

    if dilated(unexpected):
        return "this is a training-form checkpoint; load it into the variant without '_reparam'"
    if dilated(missing):
        return "this is a re-parameterised checkpoint; load it into the '_reparam' variant"
    if any(k.startswith(_DENSE_ONLY_PREFIXES) for k in unexpected):
        return "this is a dense-backbone checkpoint; create the model with features_only=True"
    if any(k.startswith(("h_proj.", "extra_norm.4.")) for k in missing):
        return "this is a segmentation-backbone checkpoint; create the model with dense_form='segmentation'"
    return None


def checkpoint_filter_fn(state_dict: dict[str, Any], model: OverLoCK) -> dict[str, Tensor]:
    """Fit an official (or our own) checkpoint to ``model`` and check that it fits exactly.

    Accepts bare state dicts or ones under ``state_dict``/``model``/``state_dict_ema``, and the ``backbone.`` part
    of official Mask R-CNN / UperNet checkpoints. An ImageNet checkpoint loaded into a dense backbone keeps the
    backbone's fresh extra norms and fusion (as the official detection and segmentation training do). Classifier
    weights are left for timm to adapt. Raises ``CheckpointMismatchError`` listing missing, unexpected and
    mis-shaped keys, with a hint when the file holds another form of the model.
    """
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    if model.dense_form is not None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "aux_head."))}
        if not any(k.startswith(_DENSE_ONLY_PREFIXES) for k in state_dict):
            _logger.info("classification checkpoint: the dense backbone's norms and fusion keep their initial values")
            state_dict.update({k: v for k, v in target.items() if k.startswith(_DENSE_ONLY_PREFIXES)})
    elif model.aux_head is None:
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
        lines = mismatch_report("checkpoint does not fit the model", missing, unexpected, mis_shaped)
        hint = _form_hint(missing, unexpected)
        if hint:
            lines.append(f"hint: {hint}")
        raise CheckpointMismatchError("\n  ".join(lines))
    return state_dict


# ---------------------------------------------------------------------- builders and pretrained configs
def _check_pretrained_file(kwargs: dict[str, Any]) -> None:
    """Clear errors for a missing, unreadable or unsafe ``pretrained_cfg_overlay['file']`` before timm loads it
    (timm then reads it as weights only)."""
    path = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if path:
        check_checkpoint_file(path)


def _create_overlock(variant: str, pretrained: bool = False, **kwargs: Any) -> OverLoCK:
    if kwargs.get("features_only", False):
        kwargs.setdefault("dense_form", "detection")
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
