"""The UperNet beyond the fixture: one computation (fx, TorchScript, export), train-mode outputs, the heads' initial
weights as mmcv makes them, loading checkpoints (variant recognition, clear errors), test-time augmentation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.fx

from overlock.models import CheckpointMismatchError
from overlock.segmentation.upernet import create_upernet, load_upernet_checkpoint
from overlock.segmentation.inference import (
    SegInference, load_segmenter, predict_probabilities, slide_logits, whole_logits,
)
from test_one_computation import _timm_fx, randomise
from test_upernet_fixture import _build


@pytest.fixture(scope="module")
def upernet() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise(create_upernet("test_overlock", num_classes=5, channels=32, aux_channels=16)).eval()


def test_traced_scripted_and_exported_are_bitwise_equal(upernet):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = upernet(x)
        runs = {"timm fx": _timm_fx(upernet), "fx": torch.fx.symbolic_trace(upernet),
                "script": torch.jit.script(upernet), "export": torch.export.export(upernet, (x,)).module()}
        for name, run in runs.items():
            assert torch.equal(run(x), expected), name


def test_train_mode_gives_both_heads():
    torch.manual_seed(0)
    model = create_upernet("test_overlock", num_classes=4, channels=16, aux_channels=8).train()
    decode, aux = model(torch.randn(2, 3, 64, 64))
    assert decode.shape == (2, 4, 16, 16) and aux.shape == (2, 4, 4, 4)
    assert not isinstance(create_upernet("test_overlock", num_classes=4, aux_channels=0).train()(
        torch.randn(2, 3, 64, 64)), tuple)


def test_conv_blocks_start_as_mmcv_initialises_them():
    """Kaiming normal with fan-out for ReLU (std sqrt(2 / fan_out)), BatchNorm (1, 0); conv_seg keeps PyTorch's."""
    torch.manual_seed(0)
    head = create_upernet("test_overlock", num_classes=5).decode_head
    weight = head.fpn_bottleneck.conv.weight  # 512 outputs, 3 x 3
    assert weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert (head.fpn_bottleneck.bn.weight == 1).all() and (head.fpn_bottleneck.bn.bias == 0).all()
    bound = 1 / 512**0.5  # PyTorch's default: uniform within 1 / sqrt(fan_in)
    assert head.conv_seg.weight.abs().max().item() <= bound and head.conv_seg.weight.std().item() > 0.5 * bound / 3**0.5


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_official_variant_recognised_from_its_keys(official_upernet_keys, tmp_path, variant, monkeypatch):
    """Only the shapes matter to the recognition: a state dict of meta tensors with the official keys."""
    import overlock.segmentation.inference as seg

    shapes = official_upernet_keys[f"upernet_overlock_{variant}"]
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert seg._official_variant(state, 150) == f"upernet_overlock_{variant}"


def test_load_an_mmseg_file_with_a_named_backbone(official_upernet, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"meta": {"CLASSES": ("a",) * 5}, "state_dict": official_upernet["state_dict"]}, path)
    loaded = load_segmenter(path, backbone="test_overlock")
    x = official_upernet["inputs"]["96x128"]
    with torch.no_grad():
        torch.testing.assert_close(whole_logits(loaded.model, x), official_upernet["whole_logits"]["96x128"],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not an official UperNet checkpoint"):
        load_segmenter(path)


def test_checkpoint_errors_are_clear(tmp_path, upernet):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_upernet_checkpoint(upernet, tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_upernet_checkpoint(upernet, tmp_path / "bad.pth")
    state = dict(upernet.state_dict())
    state["backbone.h_proj.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "det.pth")
    with pytest.raises(CheckpointMismatchError, match="detection"):
        load_upernet_checkpoint(upernet, tmp_path / "det.pth")
    other = create_upernet("test_overlock", num_classes=7, channels=32, aux_channels=16)
    torch.save(other.state_dict(), tmp_path / "classes.pth")
    with pytest.raises(CheckpointMismatchError, match="another number of classes"):
        load_upernet_checkpoint(upernet, tmp_path / "classes.pth")


class PerPixel(torch.nn.Module):
    """A stand-in segmenter: a fixed 1x1 conv at stride 4, so that its logits do not depend on the window."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.num_classes = 4

    def forward(self, x):
        return self.conv(torch.nn.functional.avg_pool2d(x, 4))


def test_sliding_windows_average_the_windows_logits():
    model = PerPixel()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        whole = whole_logits(model, x)
        one_window = slide_logits(model, x, (64, 64), (43, 43))
        torch.testing.assert_close(one_window, whole)
        # windows aligned with the 4-pixel grid see the same pooled cells as the whole image does
        tiled = slide_logits(model, x, (32, 32), (16, 16))
    torch.testing.assert_close(tiled[..., 4:-4, 4:-4], whole[..., 4:-4, 4:-4], rtol=0, atol=0.3)


def test_flip_and_scales_average_the_probabilities():
    """An image the test pipeline leaves as it is (64 x 96 fits (96, 64) and is a multiple of 32): the flipped pass
    is the mirrored image's probabilities mirrored back."""
    torch.manual_seed(0)
    model = PerPixel().eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    settings = SegInference(scale=(96, 64))
    plain = predict_probabilities(model, image, settings)
    mirrored = predict_probabilities(model, np.ascontiguousarray(image[:, ::-1]), settings).flip(-1)
    both = predict_probabilities(model, image, SegInference(scale=(96, 64), flip=True))
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    assert plain.shape == (4, 64, 96)
    torch.testing.assert_close(plain.sum(0), torch.ones(64, 96))
    half = predict_probabilities(model, image, SegInference(scale=(96, 64), ratios=(0.5,)))
    multi = predict_probabilities(model, image, SegInference(scale=(96, 64), ratios=(0.5, 1.0)))
    torch.testing.assert_close(multi, (plain + half) / 2)
    assert not torch.allclose(half, plain)


def test_the_fixture_builder_matches_the_released_configs(official_upernet):
    """The fixture's config differs from the released ones only in size: same head types and settings."""
    config = official_upernet["config"]
    assert config["decode_head"]["pool_scales"] == (1, 2, 3, 6) or list(config["decode_head"]["pool_scales"]) == [
        1, 2, 3, 6]
    assert config["decode_head"]["dropout_ratio"] == 0.1 and config["auxiliary_head"]["in_index"] == 2
    assert json.dumps(config["test_cfg"]) == json.dumps({"mode": "whole"})
    assert _build(config).decode_head.num_classes == 5


def test_features_only_takes_both_official_dense_forms(tmp_path):
    """``features_only`` builds the detection form by default and the segmentation form on request; an UperNet
    checkpoint's ``backbone.`` part loads into the latter only."""
    import timm

    torch.manual_seed(0)
    upernet = create_upernet("test_overlock", num_classes=3, channels=16, aux_channels=8)
    path = tmp_path / "upernet.pth"
    torch.save({"meta": {}, "state_dict": upernet.state_dict()}, path)
    detection = timm.create_model("test_overlock", features_only=True)
    assert any(k.startswith("model.h_proj.") for k in detection.state_dict())
    segmentation = timm.create_model("test_overlock", features_only=True, dense_form="segmentation", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(path)))
    assert {k.removeprefix("model."): v for k, v in segmentation.state_dict().items()}.keys() == \
        upernet.backbone.state_dict().keys()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(segmentation.eval()(x), upernet.eval().forward_features(x)):
            assert torch.equal(a, b)
    with pytest.raises(CheckpointMismatchError, match="create the model with dense_form='segmentation'"):
        timm.create_model("test_overlock", features_only=True, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
