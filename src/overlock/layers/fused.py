"""Sequential containers that fuse neighbouring layers at call time, the state dict unchanged.

Three fusions, each exact up to float rounding, chosen per call from the layers and the input:

- eval-mode BatchNorm folded into the adjacent convolution (``BN(conv(x))`` and ``conv1x1(BN(x))`` are one
  convolution with a rescaled weight and a shifted bias): saves a pass over the map per BatchNorm;
- inference on CPUs: a convolution followed by an exact GELU or a SiLU runs as one oneDNN convolution with
  that post-op: saves a pass and a map-sized allocation;
- inference: GRN and SE rescale a map made inside the sequence in place, which saves a map-sized
  allocation (on large maps, fresh pages cost about as much as the pass itself).

In CPU inference the folded weights are made once and kept, already in oneDNN's layout, until a parameter
changes (``overlock.layers.prepared``). Folding works on weight-sized tensors only, so parameters and
state-dict keys stay exactly the official ones. Training mode, or anything that needs gradients, runs the
layers as they are (BatchNorm folding only needs eval mode, since it is differentiable).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .conv import DilatedRepConv, ResDWConv, bn_scale, fuse_conv_bn
from .norm import GRN
from .prepared import (
    OwnsPreparedWeights, PreparedConv, PreparedWeights, kernel_choice, onednn_inference, packing_applies, prepare_conv,
    runs_without_grad,
)
from .se import SEModule


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Scale and shift of an eval-mode BatchNorm."""
    scale = bn_scale(bn)
    return scale, bn.bias - bn.running_mean * scale


def _foldable(bn: nn.Module | None) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None


def _as_conv(m: nn.Module | None) -> nn.Conv2d | None:
    """The convolution computing ``m`` (a conv, a residual depthwise conv, a merged Dilated RepConv), if any."""
    if isinstance(m, DilatedRepConv):
        m = m.lk_origin if m.deployed else None
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return m
    return None


def _is_pointwise(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding == (0, 0) \
        and m.stride == (1, 1)


def _post_op(m: nn.Module | None) -> str | None:
    """oneDNN's name of the activation ``m`` when it computes it exactly (the exact GELU, SiLU), else None."""
    if isinstance(m, nn.GELU) and m.approximate == "none":
        return "gelu"
    if isinstance(m, nn.SiLU):
        return "swish"
    return None


def _conv_sources(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor | None, ...]:
    """The tensors a (BN-folded) convolution's weight and bias are made of."""
    tensors = conv.sources() if isinstance(conv, ResDWConv) else (conv.weight, conv.bias)
    if bn is None:
        return tensors
    return (*tensors, bn.weight, bn.bias, bn.running_mean, bn.running_var)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of ``conv`` followed by ``bn`` (when given)."""
    weight = conv.kernel() if isinstance(conv, ResDWConv) else conv.weight
    return (weight, conv.bias) if bn is None else fuse_conv_bn(weight, conv.bias, bn)


def _bn_then_pointwise(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn`` followed by the 1x1 ``conv``."""
    scale, shift = _bn_affine(bn)
    weight = conv.weight * scale.reshape(1, -1, 1, 1)
    bias = conv.weight.flatten(1) @ shift
    return weight, bias if conv.bias is None else bias + conv.bias


def _prepared(
    cache: PreparedWeights | None, index: int, x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d | None,
    sources: tuple[Tensor | None, ...], weights: Callable[[], tuple[Tensor, Tensor | None]], packable: bool,
) -> PreparedConv:
    """``conv`` with the weight and bias ``weights()`` makes (``bn`` folded in): from ``cache``, packed, when
    there is a cache and ``packable`` (``packing_applies``)."""
    if cache is not None and packable:
        extra = (None if bn is None else bn.eps, kernel_choice(conv))
        return cache.get(index, sources, extra, lambda: prepare_conv(x, conv, *weights(), pack=True))
    return prepare_conv(x, conv, *weights())


def shares_no_memory(x: Tensor, source: Tensor) -> bool:
    """True when ``x`` shares no memory with ``source`` (the sequence's input, which the caller may still use);
    False while compiling, where TorchInductor plans buffer reuse itself and storages cannot be traced."""
    if torch.compiler.is_compiling():
        return False
    return x.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()


def run_fused(
    layers: Sequence[nn.Module] | Iterable[nn.Module], x: Tensor, cache: PreparedWeights | None = None
) -> Tensor:
    """Apply ``layers`` in order, fusing neighbours where the module docstring says it pays; ``cache`` keeps the
    prepared convolutions of CPU inference between calls (``overlock.layers.prepared``)."""
    layers = list(layers)
    source = x
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        conv = _as_conv(layer)
        if conv is not None:
            bn = nxt if _foldable(nxt) else None
            used = 1 if bn is None else 2
            post_op = _post_op(layers[i + used] if i + used < len(layers) else None)
            sources = _conv_sources(conv, bn)
            packable = packing_applies(x, *sources)
            if post_op is not None and not (packable or onednn_inference(x, conv.weight, conv.bias)):
                post_op = None  # oneDNN fuses the activation only in CPU inference
            if bn is None and post_op is None and not packable:
                x = layer(x)  # as the layer computes itself (its own gradients)
            else:
                x = _prepared(cache, i, x, conv, bn, sources, partial(_folded, conv, bn), packable)(x, post_op)
            i += used + (post_op is not None)
        elif _foldable(layer) and _is_pointwise(nxt):  # BN -> 1x1 conv
            sources = (layer.weight, layer.bias, layer.running_mean, layer.running_var, nxt.weight, nxt.bias)
            build = partial(_bn_then_pointwise, layer, nxt)
            x = _prepared(cache, i, x, nxt, layer, sources, build, packing_applies(x, *sources))(x)
            i += 2
        elif (
            isinstance(layer, (GRN, SEModule))
            and runs_without_grad(x, *layer.parameters())
            and shares_no_memory(x, source)
        ):
            x = layer.rescale_(x)
            i += 1
        else:
            x = layer(x)
            i += 1
    return x


class FusedSequential(OwnsPreparedWeights, nn.Sequential):
    """``nn.Sequential`` (same children, same state-dict keys) that fuses neighbouring layers (see module doc)."""

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self.prepared = PreparedWeights()

    def forward(self, x: Tensor) -> Tensor:
        return run_fused(self, x, self.prepared)
