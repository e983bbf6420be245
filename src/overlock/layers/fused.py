"""Sequential containers that fuse neighbouring layers at call time, the state dict unchanged.

Three fusions, each exact up to float rounding, chosen per call from the layers and the input:

- eval-mode BatchNorm folded into the adjacent convolution (``BN(conv(x))`` and ``conv1x1(BN(x))`` are one
  convolution with a rescaled weight and a shifted bias): saves a pass over the map per BatchNorm;
- inference on CPUs: a convolution followed by an exact GELU or a SiLU runs as one oneDNN convolution with
  that post-op: saves a pass and a map-sized allocation;
- inference: GRN and SE rescale a map made inside the sequence in place, which saves a map-sized
  allocation (on large maps, fresh pages cost about as much as the pass itself).

Folding works on weight-sized tensors only, so parameters and state-dict keys stay exactly the official
ones. Training mode, or anything that needs gradients, runs the layers as they are (BatchNorm folding
only needs eval mode, since it is differentiable).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise import forward_kernel, needs_grad
from .conv import DilatedRepConv, ResDWConv, bn_scale, fuse_conv_bn
from .norm import GRN
from .se import SEModule

# oneDNN's convolution with a fused element-wise post-op (what TorchInductor's CPU backend emits)
_ONEDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


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


def _effective_weight(conv: nn.Conv2d) -> Tensor:
    return conv.weight + conv.identity if isinstance(conv, ResDWConv) else conv.weight


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


def runs_without_grad(x: Tensor, *params: Tensor | None) -> bool:
    """True for a real tensor (not an fx proxy) when no gradient is needed through ``x`` or ``params``."""
    return isinstance(x, Tensor) and not needs_grad(x, *params)


def _onednn_post_op_ok(x: Tensor, conv: nn.Conv2d) -> bool:
    return (
        _ONEDNN_POINTWISE
        and not torch.compiler.is_compiling()  # TorchInductor fuses conv + activation itself
        and runs_without_grad(x, conv.weight, conv.bias)
        and x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _forward_kernel(x: Tensor, conv: nn.Conv2d, weight: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The (weight, padding) to run ``conv`` with ``weight`` on ``x``: a stride-1 'same' depthwise kernel that
    oneDNN is slow at, when no gradient is needed, zero-padded to a size it is fast at (``forward_kernel``)."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.stride == conv.dilation == (1, 1)
    if depthwise and conv.padding[0] == conv.padding[1] and runs_without_grad(x, weight):
        weight, padding = forward_kernel(x, weight, conv.padding[0])
        return weight, (padding, padding)
    return weight, conv.padding


def _conv(x: Tensor, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv``'s geometry with ``weight`` and ``bias``."""
    weight, padding = _forward_kernel(x, conv, weight)
    return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)


def _conv_activation(x: Tensor, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, post_op: str) -> Tensor:
    """``conv``'s geometry with ``weight`` and ``bias``, then the activation ``post_op``, as one oneDNN call."""
    weight, padding = _forward_kernel(x, conv, weight)
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, conv.stride, conv.dilation, conv.groups, post_op, [], "none"
    )


def shares_no_memory(x: Tensor, source: Tensor) -> bool:
    """True when ``x`` shares no memory with ``source`` (the sequence's input, which the caller may still use);
    False while compiling, where TorchInductor plans buffer reuse itself and storages cannot be traced."""
    if torch.compiler.is_compiling():
        return False
    return x.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()


def run_fused(layers: Sequence[nn.Module] | Iterable[nn.Module], x: Tensor) -> Tensor:
    """Apply ``layers`` in order, fusing neighbours where the module docstring says it pays."""
    layers = list(layers)
    source = x
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        conv = _as_conv(layer)
        if conv is not None:
            weight, bias, used = None, conv.bias, 1
            if _foldable(nxt):  # conv -> BN
                weight, bias = fuse_conv_bn(_effective_weight(conv), conv.bias, nxt)
                used = 2
            post_op = _post_op(layers[i + used] if i + used < len(layers) else None)
            if post_op is not None and _onednn_post_op_ok(x, conv):  # conv (-> BN) -> GELU or SiLU
                x = _conv_activation(x, conv, _effective_weight(conv) if weight is None else weight, bias, post_op)
                used += 1
            elif weight is not None:
                x = _conv(x, conv, weight, bias)
            else:
                x = layer(x)
            i += used
        elif _foldable(layer) and _is_pointwise(nxt):  # BN -> 1x1 conv
            scale, shift = _bn_affine(layer)
            weight = nxt.weight * scale.reshape(1, -1, 1, 1)
            bias = nxt.weight.flatten(1) @ shift
            if nxt.bias is not None:
                bias = bias + nxt.bias
            x = F.conv2d(x, weight, bias)
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


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` (same children, same state-dict keys) that fuses neighbouring layers (see module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        return run_fused(self, x)
