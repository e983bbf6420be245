"""Model size and cost: parameter and multiply-accumulate counts.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs halved): every convolution and
matrix product, which is what the paper's GFLOPs figures count, including our own convolution op and those
inside the fused inference ops. The dynamic-kernel application of ContMix (about 1% of the total) and
element-wise ops are not counted.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .ops import custom_op, depthwise

# The paper's Table 1 figures (deploy form, without the auxiliary head), for comparison.
PAPER_FIGURES: dict[str, dict[str, float]] = {
    "overlock_xt": dict(params_m=16, gmacs=2.6, top1=82.7),
    "overlock_t": dict(params_m=33, gmacs=5.5, top1=84.2),
    "overlock_s": dict(params_m=56, gmacs=9.7, top1=84.8),
    "overlock_b": dict(params_m=95, gmacs=16.7, top1=85.1),
}


def _depthwise_flops(x_shape, w_shape, *args, out_shape, **kwargs) -> int:
    """FLOPs of ``overlock::depthwise_conv2d``: those of the convolution with its own kernel size."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


def _pointwise_conv_flops(x_shape, w_shape, *args, out_shape, **kwargs) -> int:
    """FLOPs of oneDNN's convolution with a fused element-wise op: the convolution's."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


def _fused_contmix_flops(query_shape, key_shape, *args, out_shape, **kwargs) -> int:
    """FLOPs of ``overlock::softmax_av``: the matmul ``query @ key`` making the logits (the weighted sum is not
    counted, as for the unfused op)."""
    batch, groups, queries, channels = query_shape
    return 2 * batch * groups * queries * channels * key_shape[-1]


def _custom_flop_formulas() -> dict:
    formulas = {
        depthwise.depthwise_conv2d._opoverload.overloadpacket: _depthwise_flops,
        custom_op.softmax_av._opoverload.overloadpacket: _fused_contmix_flops,
    }
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if op is not None:
        formulas[op] = _pointwise_conv_flops
    return formulas


def count_params(model: nn.Module, exclude_prefixes: Sequence[str] = ()) -> int:
    """Number of parameters, leaving out those whose name starts with one of ``exclude_prefixes``."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(tuple(exclude_prefixes)))


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a ``batch_size`` x ``input_size`` input."""
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers())
    x = torch.zeros(batch_size, *input_size, device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
