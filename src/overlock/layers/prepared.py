"""Convolution weights prepared once for CPU inference, kept by the module that owns the convolution.

Run as given, every inference call of a convolution re-derives its weight (BatchNorm folded in, the residual
identity added, a 13x13 kernel zero-padded to 15x15), and oneDNN then copies that weight into its blocked
layout before it convolves: a handful of small operations and a weight-sized reorder per call, 177 reorders
in an OverLoCK-XT pass (``benchmarks/prepared_weights.py`` counts them and times both ways).
``PreparedWeights`` keeps the derived weight already in oneDNN's layout, made on first use and made again
when a tensor it came from has changed: another storage, or an in-place write (an optimiser step,
``load_state_dict``, BatchNorm statistics updated in training). Moving or casting the owner (``.to``,
``.half``) empties it.

It applies to channels-last float32 CPU maps without gradients, on x86 builds of PyTorch with oneDNN, and
never while compiling (TorchInductor prepares weights itself). ``OVERLOCK_PACKED_WEIGHTS=off`` turns it off
(``auto``, the default, uses it wherever it applies).
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise import forward_kernel, kernel_padding_enabled, needs_grad, pads_kernel_size

PACK_ENV_VAR = "OVERLOCK_PACKED_WEIGHTS"

_ONEDNN = torch.backends.mkldnn.is_available()
# oneDNN's convolution with a fused element-wise post-op (what TorchInductor's CPU backend emits)
ONEDNN_POINTWISE = _ONEDNN and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# weights reordered ahead into oneDNN's layout, which that convolution takes as they are (x86 builds)
_ONEDNN_PACKING = (
    ONEDNN_POINTWISE
    and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    and platform.machine().lower() in ("x86_64", "amd64")
)


@dataclass(frozen=True)
class PreparedConv:
    """A convolution ready to run: its (possibly oneDNN-packed) weight, bias and geometry."""

    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def __call__(self, x: Tensor, post_op: str | None = None) -> Tensor:
        """The convolution of ``x``, then oneDNN's element-wise ``post_op`` ('gelu', 'swish') when given."""
        if post_op is None and not (isinstance(self.weight, Tensor) and self.weight.is_mkldnn):  # or an fx proxy
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            post_op or "none", [], "none",
        )


def _is_same_depthwise(conv: nn.Conv2d) -> bool:
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and conv.stride == conv.dilation == (1, 1)
        and conv.padding[0] == conv.padding[1]
    )


def prepare_conv(x: Tensor, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, pack: bool = False) -> PreparedConv:
    """``conv``'s geometry with ``weight`` and ``bias`` for inputs like ``x``.

    Without gradients, a stride-1 'same' depthwise kernel oneDNN is slow at is zero-padded to a size it is
    fast at (``ops.depthwise.forward_kernel``); with ``pack`` the weight is reordered into oneDNN's layout.
    """
    padding = tuple(conv.padding)
    if _is_same_depthwise(conv) and runs_without_grad(x, weight):
        weight, pad = forward_kernel(x, weight, conv.padding[0])
        padding = (pad, pad)
    if pack:
        weight = torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape)
        )
    return PreparedConv(weight, bias, tuple(conv.stride), padding, tuple(conv.dilation), conv.groups)


def runs_without_grad(x: Tensor, *params: Tensor | None) -> bool:
    """True for a real tensor (not an fx proxy) when no gradient is needed through ``x`` or ``params``."""
    return isinstance(x, Tensor) and not needs_grad(x, *params)


def onednn_inference(x: Tensor, *params: Tensor | None) -> bool:
    """Whether a convolution of ``x`` with ``params`` may go straight to oneDNN: float32 CPU tensors, no
    gradient needed, no autocast, not compiling (TorchInductor plans its own oneDNN calls)."""
    return (
        ONEDNN_POINTWISE
        and isinstance(x, Tensor)  # not an fx proxy
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and runs_without_grad(x, *params)
        and all(p is None or p.dtype == torch.float32 for p in params)
    )


def packing_applies(x: Tensor, *params: Tensor | None) -> bool:
    """Whether a convolution of ``x`` with ``params`` may run from a cached, oneDNN-packed weight (module doc)."""
    return (
        _ONEDNN_PACKING
        and onednn_inference(x, *params)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not any(p is not None and p.is_inference() for p in params)
        and _packing_enabled()
    )


def _packing_enabled() -> bool:
    setting = os.environ.get(PACK_ENV_VAR, "auto").strip().lower()
    if setting not in ("auto", "off"):
        raise ValueError(f"{PACK_ENV_VAR} must be 'auto' or 'off', got {setting!r}")
    return setting == "auto"


def kernel_choice(conv: nn.Conv2d) -> bool | None:
    """What ``prepare_conv``'s result depends on besides the tensors: whether padded kernels are in use, for the
    kernel sizes that get padded (None for the others)."""
    return kernel_padding_enabled() if pads_kernel_size(conv.kernel_size[0]) else None


class PreparedWeights:
    """Tensors derived from a module's parameters for inference, each kept until one of its sources changes.

    An entry remembers the storage address and in-place version of every source tensor, and holds views of
    them, so that a freed storage's address cannot come back under another tensor while the entry lives.
    Copies and pickles of the owner start empty.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple, tuple[Tensor, ...], PreparedConv]] = {}

    def get(
        self, name: Hashable, sources: tuple[Tensor | None, ...], extra: Hashable, build: Callable[[], PreparedConv]
    ) -> PreparedConv:
        """The entry ``name``: ``build()``'s result, made again when ``sources`` or ``extra`` differ from last time."""
        present = tuple(t for t in sources if t is not None)
        key = (tuple((t.data_ptr(), t._version) for t in present), extra)
        entry = self._entries.get(name)
        if entry is not None and entry[0] == key:
            return entry[2]
        value = build()
        self._entries[name] = (key, tuple(t.detach() for t in present), value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):  # deepcopy and pickle: an empty cache, not oneDNN's opaque tensors
        return (type(self), ())


class OwnsPreparedWeights(nn.Module):
    """Mixin for modules that keep ``PreparedWeights`` (as ``self.prepared``): moving or casting empties it."""

    prepared: PreparedWeights

    def _apply(self, fn, recurse=True):
        self.prepared.clear()
        return super()._apply(fn, recurse)
