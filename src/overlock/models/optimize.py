"""``optimize_for_inference``: an OverLoCK model converted, once, into a faster one for inference.

The plain model computes exactly what the official one computes, layer by layer, however it is called. This
conversion replaces its layers with inference modules of their own (``overlock.layers.fused``), so that the
converted model can be printed and inspected, traced, compiled and exported like the plain one; it gives the
same outputs up to float rounding and cannot be trained. Each named pass is kept because it speeds up the whole
model (``python benchmarks/inference_passes.py``; figures in docs/models.md):

- ``fold`` (always): every eval-mode BatchNorm folded into its neighbouring convolution, the Dilated RepConv
  branches merged into one kernel, the residual identity of the 3x3 depthwise convolutions into their centre tap;
- ``onednn``: a convolution and the activation after it (GELU, SiLU) as one oneDNN call, where this PyTorch
  has oneDNN (float32 CPU models);
- ``pad_kernels``: 13x13 depthwise kernels as 15x15 ones with a zero border where oneDNN runs AVX-512 code,
  whose 13x13 kernel is 2-3x slower than its 15x15 one;
- ``inplace_norms``: GRN and SE rescale the map they are given in place (in OverLoCK their input is always a
  fresh map nothing else reads), SE's MLP as matrix products on the pooled vector;
- ``fused_contmix``: ContMix's bias, softmax and weighted sum as one CPU kernel working a cache-sized block at
  a time (float32 CPU models);
- ``channels_last``: the input batch and every weight in channels-last layout (CPU models);
- ``batch_parts``: the stem and stage 1, on the largest maps of the network, run a few images at a time, each
  part's stage-1 output within ``STAGE1_BYTES_PER_PART`` (CPU models), so that it stays in cache.

Capabilities are checked here, once, for the device and dtype the model is on; ``passes`` picks a subset.
"""
from __future__ import annotations

import copy
import itertools
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from ..layers import ContMix, DilatedRepConv, GRN, ResDWConv, SEModule
from ..layers.conv import bn_scale_shift, fuse_conv_bn
from ..layers.fused import (
    BatchParts, ChannelsLast, FoldedConv, FusedContMix, InPlaceGRN, InPlaceSE, InferenceModule, OneDNNConv,
    onednn_fusion_available,
)
from ..ops.depthwise import padded_for_speed
from .overlock import OverLoCK, RepConvStage

__all__ = ["PASSES", "optimize_for_inference"]

PASSES = ("fold", "onednn", "pad_kernels", "inplace_norms", "fused_contmix", "channels_last", "batch_parts")
# stage-1 output of one part of the batch in ``batch_parts``: two parts of four images for XT at batch 8, 224 px
STAGE1_BYTES_PER_PART = 3 << 20


def optimize_for_inference(
    model: nn.Module, passes: Optional[Iterable[str]] = None, inplace: bool = False
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) converted for fast inference, in eval mode.

    ``passes``: the names in ``PASSES`` to apply (default: all that apply to the model's device and dtype; 'fold'
    is always applied). Outputs equal the plain model's up to float rounding; calling ``.train()`` on the result
    raises an error.
    """
    chosen = set(PASSES if passes is None else passes) | {"fold"}
    unknown = chosen - set(PASSES)
    if unknown:
        raise ValueError(f"unknown inference passes {sorted(unknown)}; choose from {', '.join(PASSES)}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        _convert(model, chosen)
    model.requires_grad_(False)
    return model


def _convert(model: nn.Module, chosen: set[str]) -> None:
    if getattr(model, "aux_head", None) is not None:  # only the training loss uses it
        model.aux_head = None
    reference = next(itertools.chain(model.parameters(), model.buffers()), None)
    on_cpu = reference is None or reference.device.type == "cpu"
    float32 = reference is None or reference.dtype == torch.float32
    conv_class = OneDNNConv if ("onednn" in chosen and on_cpu and float32 and onednn_fusion_available()) else FoldedConv
    pad = "pad_kernels" in chosen and on_cpu and float32
    for parent in list(model.modules()):
        if isinstance(parent, InferenceModule):
            continue
        if type(parent) is nn.Sequential:
            _fold_sequence(parent, conv_class, pad)
        for name, child in list(parent.named_children()):
            replacement = _replacement(child, chosen, conv_class, pad, on_cpu and float32)
            if replacement is not None:
                setattr(parent, name, replacement)
    if "channels_last" in chosen and on_cpu and hasattr(model, "patch_embed1"):
        model.patch_embed1 = nn.Sequential(ChannelsLast(), *model.patch_embed1)
        model.to(memory_format=torch.channels_last)
    if "batch_parts" in chosen and on_cpu and isinstance(model, OverLoCK):
        stage1 = nn.Sequential(model.patch_embed1, model.blocks1)  # both run in parts; stage 1 moves inside
        model.patch_embed1 = BatchParts(stage1, model.embed_dims[0], 4, STAGE1_BYTES_PER_PART)
        model.blocks1 = RepConvStage()


def _replacement(
    module: nn.Module, chosen: set[str], conv_class: type[FoldedConv], pad: bool, cpu_float32: bool
) -> Optional[nn.Module]:
    """The inference module for a layer that is not part of a foldable sequence, if it has one."""
    if isinstance(module, ResDWConv):
        return _conv_module(conv_class, module, module.kernel(), module.bias, "none", pad)
    if "inplace_norms" in chosen and isinstance(module, GRN):
        return InPlaceGRN(module.gamma, module.beta)
    if "inplace_norms" in chosen and isinstance(module, SEModule):
        return InPlaceSE(module.proj[1], module.proj[3])
    if ("fused_contmix" in chosen and cpu_float32 and type(module) is ContMix and module.dilation == 1
            and module.softmax):  # undilated, normalised kernels only
        return FusedContMix(module.kernel_size, module.smk_size, module.num_groups)
    return None


def _fold_sequence(seq: nn.Sequential, conv_class: type[FoldedConv], pad: bool) -> None:
    """Fold conv -> BN (-> GELU/SiLU) and BN -> 1x1 conv runs of ``seq`` into single modules, in place; the layers
    folded away become ``nn.Identity`` so that every index keeps its meaning."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        conv, nxt = _conv_weights(layers[i]), layers[i + 1] if i + 1 < len(layers) else None
        if conv is not None:
            layer, (weight, bias) = layers[i], conv
            used = 1
            if _is_eval_bn(nxt):
                weight, bias = fuse_conv_bn(weight, bias, nxt)
                used = 2
            after = layers[i + used] if i + used < len(layers) else None
            activation = _activation(after)
            if activation != "none":
                used += 1
            seq[i] = _conv_module(conv_class, _geometry_of(layer), weight, bias, activation, pad)
        elif _is_eval_bn(layers[i]) and _is_pointwise(nxt):
            scale, shift = bn_scale_shift(layers[i])
            weight = nxt.weight * scale.reshape(1, -1, 1, 1)
            bias = nxt.weight.flatten(1) @ shift + (nxt.bias if nxt.bias is not None else 0)
            seq[i] = _conv_module(conv_class, nxt, weight, bias, "none", pad)
            used = 2
        else:
            i += 1
            continue
        for j in range(i + 1, i + used):
            seq[j] = nn.Identity()
        i += used


def _conv_weights(module: Optional[nn.Module]) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """Weight and bias of the single convolution computing ``module`` in eval mode, if it is one."""
    if isinstance(module, DilatedRepConv):
        return module.merged_kernel()
    if isinstance(module, ResDWConv):
        return module.kernel(), module.bias
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return module.weight, module.bias
    return None


def _geometry_of(module: nn.Module) -> nn.Conv2d:
    """The convolution whose stride, padding, dilation and groups ``module`` computes with."""
    return module.lk_origin if isinstance(module, DilatedRepConv) else module


def _conv_module(
    conv_class: type[FoldedConv], geometry: nn.Conv2d, weight: Tensor, bias: Optional[Tensor], activation: str,
    pad: bool,
) -> FoldedConv:
    padding = tuple(geometry.padding)
    depthwise_same = (
        geometry.groups == weight.shape[0] and weight.shape[1] == 1 and tuple(geometry.stride) == (1, 1)
        and tuple(geometry.dilation) == (1, 1) and padding == (weight.shape[-1] // 2, weight.shape[-2] // 2)
    )
    if pad and depthwise_same:
        weight = padded_for_speed(weight)
        padding = (weight.shape[-1] // 2, weight.shape[-2] // 2)
    with torch.no_grad():
        return conv_class(weight, bias, geometry.stride, padding, geometry.dilation, geometry.groups, activation)


def _is_eval_bn(module: Optional[nn.Module]) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training \
        and module.running_mean is not None


def _is_pointwise(module: Optional[nn.Module]) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1 \
        and module.padding == (0, 0) and module.stride == (1, 1)


def _activation(module: Optional[nn.Module]) -> str:
    """The fusable activation ``module`` is ('gelu' for the exact GELU, 'silu'), or 'none'."""
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.SiLU):
        return "silu"
    return "none"
