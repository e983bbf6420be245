"""Inference modules that ``overlock.optimize_for_inference`` installs in place of trained layers.

Each one computes what the layers it replaces compute in eval mode (up to float rounding) from weights derived
once, when it is built: BatchNorm folded into the neighbouring convolution, a residual identity into a depthwise
kernel's centre tap, the Dilated RepConv branches into one kernel. They hold buffers, not parameters, and refuse
to be put in training mode.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from ..ops import relative_position_bias
from ..ops.shapes import check_window
from .contmix import grouped_query_and_key, value_halves

ACTIVATIONS = ("none", "gelu", "silu")
# oneDNN's names of the element-wise operations its convolution can apply to its output
_ONEDNN_POST_OPS = {"none": "none", "gelu": "gelu", "silu": "swish"}


def onednn_fusion_available() -> bool:
    """Whether this PyTorch can run a convolution and its activation as one oneDNN call (x86 and Arm builds
    with oneDNN; the private operator TorchInductor's CPU backend also emits)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class InferenceModule(nn.Module):
    """Base of the inference modules: eval mode only."""

    def train(self, mode: bool = True) -> "InferenceModule":
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is an inference module installed by optimize_for_inference(); "
                "train the model it was made from (or a freshly built one) instead"
            )
        return super().train(False)


class FoldedConv(InferenceModule):
    """A convolution with a weight and bias derived from the layers it replaces, then an optional activation
    ('gelu' exact, or 'silu')."""

    def __init__(
        self, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, int], padding: tuple[int, int],
        dilation: tuple[int, int], groups: int, activation: str = "none",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.activation = activation

    def extra_repr(self) -> str:
        out, per_group, kh, kw = self.weight.shape
        return (f"{per_group * self.groups}, {out}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
                f"activation={self.activation}")

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation == "gelu":
            return F.gelu(x)
        if self.activation == "silu":
            return F.silu(x)
        return x


class OneDNNConv(FoldedConv):
    """``FoldedConv`` run as one oneDNN call that applies the activation to the convolution's output as it is
    written (float32 CPU tensors; ``onednn_fusion_available`` tells where it exists)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            _ONEDNN_POST_OPS[self.activation], [], "none",
        )


class ChannelsLast(InferenceModule):
    """Puts the input batch in channels-last memory layout (where the network's depthwise convolutions are
    fastest on CPUs); values unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


@register_notrace_module  # the number of parts depends on the input's shape: a leaf for fx
class BatchParts(InferenceModule):
    """Runs ``module`` on a few images of the batch at a time and concatenates the results: each part's output
    stays within ``max_bytes`` (estimated from ``channels`` output channels at ``1 / stride`` of the input's
    size), so that on the network's largest maps it stays in cache instead of streaming through memory. Every
    layer of an eval-mode network works on each image alone, so the result is the same."""

    def __init__(self, module: nn.Module, channels: int, stride: int, max_bytes: int):
        super().__init__()
        self.module = module
        self.channels, self.stride, self.max_bytes = channels, stride, max_bytes

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, max_bytes={self.max_bytes}"

    def parts(self, x: Tensor) -> int:
        """How many parts the batch ``x`` is run in."""
        height, width = -(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride)
        per_image = self.channels * height * width * x.element_size()
        return max(1, min(x.shape[0], -(-x.shape[0] * per_image // self.max_bytes)))

    def forward(self, x: Tensor) -> Tensor:
        parts = self.parts(x)
        if parts == 1:
            return self.module(x)
        return torch.cat([self.module(part) for part in x.tensor_split(parts)])


class InPlaceGRN(InferenceModule):
    """GRN computed over its input's own memory (its input is a map nothing else reads), with the spatial
    norm as the square root of a sum of squares."""

    def __init__(self, gamma: Tensor, beta: Tensor):
        super().__init__()
        self.register_buffer("gamma", gamma.detach().clone())
        self.register_buffer("beta", beta.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        spatial_norm = x.square().sum(dim=(-1, -2), keepdim=True).sqrt()
        relative = spatial_norm / (spatial_norm.mean(dim=1, keepdim=True) + 1e-6)
        return torch.addcmul(self.beta, x, self.gamma * relative + 1, out=x)


class InPlaceSE(InferenceModule):
    """Squeeze-and-excitation with its MLP as matrix products on the pooled vector, rescaling its input's own
    memory (its input is a map nothing else reads)."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d):
        super().__init__()
        self.register_buffer("reduce_weight", reduce.weight.detach().flatten(1).clone())
        self.register_buffer("reduce_bias", reduce.bias.detach().clone())
        self.register_buffer("expand_weight", expand.weight.detach().flatten(1).clone())
        self.register_buffer("expand_bias", expand.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(-1, -2))
        hidden = F.gelu(F.linear(pooled, self.reduce_weight, self.reduce_bias))
        gate = torch.sigmoid(F.linear(hidden, self.expand_weight, self.expand_bias))
        return x.mul_(gate[:, :, None, None])


@register_notrace_module  # shape-dependent: a leaf for fx
class FusedContMix(InferenceModule):
    """ContMix's mixing with bias, softmax and weighted sum fused (``overlock::softmax_av``): each kernel's logits
    are made from their factors a cache-sized block at a time, so neither they nor the kernel weights are written
    to memory. Same arguments and result as ``ContMix``."""

    def __init__(self, kernel_size: int, smk_size: int, num_groups: int):
        super().__init__()
        self.kernel_size, self.smk_size, self.num_groups = kernel_size, smk_size, num_groups

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, smk_size={self.smk_size}, groups={self.num_groups}"

    def forward(
        self, value: Tensor, query: Tensor, key: Tensor, proj_weight: Tensor, proj_bias: Optional[Tensor],
        rpb_small: Tensor, rpb_large: Tensor,
    ) -> Tensor:
        _, _, height, width = value.shape
        groups = self.num_groups
        query, key_proj = grouped_query_and_key(query, key, proj_weight, groups)
        sizes = [self.smk_size * self.smk_size, self.kernel_size * self.kernel_size]
        biases = proj_bias.split(sizes) if proj_bias is not None else (None, None)
        values, out, halves = value_halves(value, groups)
        for half, (size, key_part, bias, rpb) in enumerate(
            zip((self.smk_size, self.kernel_size), key_proj.split(sizes, dim=-1), biases, (rpb_small, rpb_large))
        ):
            total_bias = relative_position_bias(rpb, height, width, size).reshape(groups, height * width, -1)
            if bias is not None:
                total_bias = total_bias + bias
            check_window(size, height, width)
            mixed = torch.ops.overlock.softmax_av(query, key_part, total_bias, values[half], size)
            halves[:, half].copy_(mixed.permute(0, 1, 4, 2, 3))
        return out
