"""ONNX translations of what the plain model computes outside ONNX's standard operators.

``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translations())`` writes the model with
standard ONNX operators only, for any batch and image size:

- ``overlock::neighbourhood_av``, ContMix's weighted sum, with the reference semantics (``ops/reference.py``):
  on an axis of length L the K-long window of query i starts at ``clip(i - K//2, 0, L - K)``, computed from the
  map's run-time size. One window row at a time: the K values of each query's row are gathered (a K-times copy
  of the value map, not K^2) and weighted by the row's K kernel weights in one batched MatMul. The relative
  position bias and the softmax before it are plain PyTorch and export as they are.
- ``overlock::depthwise_conv2d``: ONNX ``Conv`` with one group per channel.
- ``aten::_adaptive_avg_pool2d``: adaptive average pooling of a map of run-time size, as two MatMuls with the
  pooling matrices (row i of the output averages input rows ``floor(i * H / h)`` to ``ceil((i + 1) * H / h) - 1``,
  PyTorch's windows). PyTorch's own decomposition fixes the window length at the traced size, so that the
  ContMix region pooling, and the pooling back after a map was resized up for its kernel, would only hold for
  the traced size.

The inference-only ``overlock::softmax_av`` of ``optimize_for_inference``'s models has no translation: export the
plain model. This module needs onnxscript (``pip install overlock[export]``); nothing imports it but the export.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from onnxscript import INT64
from onnxscript import opset18 as op
from onnxscript.onnx_types import TensorType

from . import custom_op, depthwise  # noqa: F401  (registers the ops)

__all__ = ["onnx_translations"]

FLOAT = 1  # ONNX's float32 type number, for Cast


def onnx_translations() -> dict[Any, Callable]:
    """The translation table for ``torch.onnx.export(..., custom_translation_table=...)``."""
    return {
        torch.ops.overlock.neighbourhood_av.default: neighbourhood_av,
        torch.ops.overlock.depthwise_conv2d.default: depthwise_conv2d,
        torch.ops.aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
        torch.ops.aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
    }


def _scalar(value: int) -> TensorType:
    return op.Constant(value_int=value)


def _length(x: TensorType, axis: int) -> TensorType:
    """The run-time length of axis ``axis`` of ``x``, as an int64 scalar."""
    return op.Gather(op.Shape(x), _scalar(axis), axis=0)


def _window_starts(length: TensorType, kernel_size: int) -> TensorType:
    """``clip(i - K//2, 0, L - K)`` for every position i of an axis of length L."""
    positions = op.Range(_scalar(0), length, _scalar(1))
    return op.Clip(op.Sub(positions, _scalar(kernel_size // 2)), _scalar(0), op.Sub(length, _scalar(kernel_size)))


def neighbourhood_av(attn: TensorType, value: TensorType, kernel_size: int, backend: str) -> TensorType:
    """(B, G, H, W, K*K) weights applied to (B, G, H, W, C) values with clamped K x K windows (``backend`` only
    chooses PyTorch's kernels)."""
    k = kernel_size
    first_rows = _window_starts(_length(value, 2), k)  # (H,)
    columns = op.Add(op.Unsqueeze(_window_starts(_length(value, 3), k), [1]), op.Constant(value_ints=list(range(k))))
    out = None
    for a in range(k):  # window row a of every query
        rows = op.Gather(value, op.Add(first_rows, _scalar(a)), axis=2)  # (B, G, H, W, C): row s_i + a
        window_row = op.Gather(rows, columns, axis=3)  # (B, G, H, W, K, C)
        weights = op.Unsqueeze(op.Slice(attn, [a * k], [(a + 1) * k], [4]), [4])  # (B, G, H, W, 1, K)
        part = op.MatMul(weights, window_row)  # (B, G, H, W, 1, C)
        out = part if out is None else op.Add(out, part)
    return op.Squeeze(out, [4])


def depthwise_conv2d(x: TensorType, weight: TensorType, bias: TensorType | None, padding: int,
                     dilation: int) -> TensorType:
    """Stride-1 depthwise convolution: one group per channel."""
    attributes = dict(group=weight.shape[0], pads=[padding] * 4, dilations=[dilation] * 2, strides=[1, 1])
    if bias is None:
        return op.Conv(x, weight, **attributes)
    return op.Conv(x, weight, bias, **attributes)


def _pooling_matrix(length: TensorType, size: TensorType) -> TensorType:
    """(size, length) float matrix whose row i averages PyTorch's adaptive-pooling window i."""
    i = op.Range(_scalar(0), size, _scalar(1))
    start = op.Div(op.Mul(i, length), size)  # floor(i * L / n) (non-negative integers)
    end = op.Div(op.Sub(op.Add(op.Mul(op.Add(i, _scalar(1)), length), size), _scalar(1)), size)  # ceil
    start, end = op.Unsqueeze(start, [1]), op.Unsqueeze(end, [1])
    j = op.Unsqueeze(op.Range(_scalar(0), length, _scalar(1)), [0])
    inside = op.And(op.GreaterOrEqual(j, start), op.Less(j, end))
    return op.Where(inside, op.Reciprocal(op.Cast(op.Sub(end, start), to=FLOAT)), op.Constant(value_float=0.0))


def _adaptive_avg_pool2d(x: TensorType, output_size) -> TensorType:  # noqa: ANN001 - ints, or a tensor of sizes
    """Adaptive average pooling of (B, C, H, W) maps of any size to ``output_size`` (a list of ints when the
    output size is fixed, a tensor when it follows the input's)."""
    if isinstance(output_size, (list, tuple)) and list(output_size) == [1, 1]:
        return op.ReduceMean(x, [-2, -1], keepdims=1)
    size = op.Cast(output_size, to=INT64.dtype)
    rows = op.CastLike(_pooling_matrix(_length(x, -2), op.Gather(size, _scalar(0), axis=0)), x)
    cols = op.CastLike(_pooling_matrix(_length(x, -1), op.Gather(size, _scalar(1), axis=0)), x)
    return op.MatMul(op.MatMul(rows, x), op.Transpose(cols, perm=[1, 0]))
