"""ONNX export: standard operators only (opset 18), any batch and image size, ONNX Runtime within 1e-4 of PyTorch
at 224x224, at a non-square size with a resized map and where every Focus-Net map is smaller than its kernel; the
dense backbone; and the translations against the reference implementation. Skipped, with the reason, without the
export extra."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from overlock.export import export_onnx, relative_error
from overlock.ops.reference import av_forward
from test_export import SIZES
from test_one_computation import randomise

onnx = pytest.importorskip("onnx", reason="ONNX export needs the extra: pip install 'overlock[export]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime checks need the extra: pip install 'overlock[export]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the extra: pip install 'overlock[export]'")

TOL = 1e-4


def _session(path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _export_small(module: nn.Module, args: tuple, shapes, path) -> "ort.InferenceSession":
    from overlock.ops.onnx import onnx_translations

    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, opset_version=18,
                                custom_translation_table=onnx_translations(), verbose=False)
    program.save(str(path))
    return _session(path)


class WeightedSum(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, attn, value):
        return torch.ops.overlock.neighbourhood_av(attn, value, self.kernel_size, "auto")


@pytest.mark.parametrize("k", [3, 5])
def test_weighted_sum_translation_matches_the_reference(k, tmp_path):
    """Clamped windows at every border, on maps from exactly K to wider than tall, against the oracle."""
    height, width = Dim("height", min=k), Dim("width", min=k)
    shapes = {"attn": {0: Dim("batch"), 2: height, 3: width}, "value": {0: Dim("batch"), 2: height, 3: width}}
    example = (torch.rand(2, 2, k + 4, k + 6, k * k), torch.randn(2, 2, k + 4, k + 6, 3))
    session = _export_small(WeightedSum(k), example, shapes, tmp_path / "av.onnx")
    for size in [(k, k), (k, k + 3), (k + 5, k + 1), (17, 9)]:
        attn, value = torch.rand(3, 2, *size, k * k).softmax(-1), torch.randn(3, 2, *size, 3)
        (got,) = session.run(None, {"attn": attn.numpy(), "value": value.numpy()})
        assert relative_error(got, av_forward(attn, value, k)) <= 1e-6, size


class Pools(nn.Module):
    def forward(self, x, reference):
        return (F.adaptive_avg_pool2d(x, 7), F.adaptive_avg_pool2d(x, 1),
                F.adaptive_avg_pool2d(x, reference.shape[-2:]))


def test_adaptive_pooling_translation_holds_for_every_size(tmp_path):
    """PyTorch's windows, also where the sizes do not divide (its own ONNX decomposition fixes them when traced)."""
    shapes = {"x": {0: Dim("batch"), 2: Dim("h", min=7), 3: Dim("w", min=7)}, "reference": {2: Dim("rh"), 3: Dim("rw")}}
    session = _export_small(Pools(), (torch.randn(2, 4, 14, 14), torch.randn(1, 1, 9, 7)), shapes,
                            tmp_path / "pool.onnx")
    for (h, w), (rh, rw) in [((14, 14), (9, 7)), ((19, 13), (5, 11)), ((7, 30), (7, 3)), ((26, 9), (13, 9))]:
        x, reference = torch.randn(2, 4, h, w), torch.randn(1, 1, rh, rw)
        got = session.run(None, {"x": x.numpy(), "reference": reference.numpy()})
        assert relative_error(got, Pools()(x, reference)) <= 1e-6, (h, w, rh, rw)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """test_overlock (the official kernel sizes, 13 and 7 in the Focus-Net) with non-trivial BN and bias values."""
    torch.manual_seed(0)
    return randomise(timm.create_model("test_overlock")).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", (3, 64, 64))


def test_onnx_file_is_standard_opset_18_with_free_batch_and_size(onnx_file):
    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)
    assert {o.domain for o in graph.opset_import} == {""} and graph.opset_import[0].version >= 18
    assert {node.domain for node in graph.graph.node} == {""}  # no custom operator left
    (images,) = graph.graph.input
    assert images.name == "images" and [o.name for o in graph.graph.output] == ["logits"]
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:1] + dims[2:]] == ["batch", "height", "width"] and dims[1].dim_value == 3


@pytest.mark.parametrize("size", SIZES + [(1, 32, 32)], ids=str)  # 32 px: below the exported range, runs anyway
def test_onnx_runtime_matches_pytorch(model, onnx_file, size):
    batch, height, width = size
    x = torch.randn(batch, 3, height, width)
    (got,) = _session(onnx_file).run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert relative_error(got, model(x)) <= TOL


@pytest.mark.slow
def test_dense_backbone_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    backbone = randomise(timm.create_model("test_overlock", features_only=True)).eval()
    path = export_onnx(backbone, tmp_path / "dense.onnx", (3, 64, 64))
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["level0", "level1", "level2", "level3"]
    for height, width in [(224, 160), (64, 96)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            assert relative_error(session.run(None, {"images": x.numpy()}), backbone(x)) <= TOL


