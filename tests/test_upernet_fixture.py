"""The UperNet against the official implementation's outputs (mmsegmentation 0.30, ../shared/fixtures/
official_upernet_tiny.pt): backbone features, both heads' logits, whole-image and sliding-window inference,
rescaled probabilities and the training losses; and the official checkpoints' keys for T/S/B."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from overlock.segmentation.upernet import create_upernet, load_upernet_checkpoint, upernet_from_mmseg_config
from overlock.segmentation.inference import slide_logits, whole_logits
from overlock.segmentation.loss import segmentation_losses

TOLERANCE = 1e-5  # relative to the largest magnitude of the official output


def _build(config: dict, seed: int = 0) -> torch.nn.Module:
    """Our UperNet for the fixture's mmsegmentation config."""
    torch.manual_seed(seed)
    return upernet_from_mmseg_config(config)


@pytest.fixture(scope="module")
def model(official_upernet) -> torch.nn.Module:
    net = _build(official_upernet["config"])
    net.load_state_dict(official_upernet["state_dict"])  # strict
    return net.eval()


def test_config_is_the_official_head_configuration(official_upernet, model):
    decode = official_upernet["config"]["decode_head"]
    assert [info["num_chs"] for info in model.backbone.feature_info] == decode["in_channels"]
    assert official_upernet["config"]["auxiliary_head"]["in_channels"] == decode["in_channels"][2]


@pytest.mark.parametrize("size", ["64x64", "96x128"])
def test_backbone_features(official_upernet, model, size):
    with torch.no_grad():
        ours = model.forward_features(official_upernet["inputs"][size])
    for level, expected in zip(ours, official_upernet["backbone_features"][size], strict=True):
        assert level.shape == expected.shape
        assert rel_err(level, expected) < TOLERANCE


@pytest.mark.parametrize("size", ["64x64", "96x128"])
def test_decode_aux_and_whole_logits(official_upernet, model, size):
    x = official_upernet["inputs"][size]
    with torch.no_grad():
        features = model.forward_features(x)
        decode = model.decode_head(features)
        aux = model.auxiliary_head(features[model.aux_index])
        whole = whole_logits(model, x)
    for name, ours in (("decode_logits", decode), ("aux_logits", aux), ("whole_logits", whole)):
        expected = official_upernet[name][size]
        assert ours.shape == expected.shape, name
        assert rel_err(ours, expected) < TOLERANCE, name


def test_sliding_window_logits(official_upernet, model):
    slide = official_upernet["slide"]
    with torch.no_grad():
        ours = slide_logits(model, official_upernet["inputs"][slide["input"]], slide["crop_size"], slide["stride"])
    assert rel_err(ours, slide["logits"]) < TOLERANCE


def test_rescaled_probabilities(official_upernet, model):
    rescaled = official_upernet["rescaled"]
    height, width = rescaled["ori_shape"][:2]
    with torch.no_grad():
        logits = whole_logits(model, official_upernet["inputs"][rescaled["input"]])
        probs = torch.softmax(torch.nn.functional.interpolate(logits, (height, width), mode="bilinear"), dim=1)
    assert rel_err(probs, rescaled["probs"]) < TOLERANCE


def test_losses_with_ignored_pixels(official_upernet, model):
    losses = official_upernet["losses"]
    labels = losses["labels"]
    assert (labels == 255).any() and (labels != 255).any()
    with torch.no_grad():
        features = model.forward_features(official_upernet["inputs"][losses["input"]])
        outputs = (model.decode_head(features), model.auxiliary_head(features[model.aux_index]))
    ours = segmentation_losses(outputs, labels, aux_weight=official_upernet["config"]["auxiliary_head"]
                               ["loss_decode"]["loss_weight"])
    for name, expected in losses["values"].items():
        assert rel_err(ours[name].reshape(expected.shape), expected) < TOLERANCE, name
    total = losses["values"]["decode.loss_ce"] + losses["values"]["aux.loss_ce"]
    assert rel_err(ours["loss"], total) < TOLERANCE


def test_fresh_build_loads_the_state_dict_strictly(official_upernet, tmp_path):
    reload = official_upernet["reload"]
    path = tmp_path / "mmseg.pth"
    torch.save({"meta": {"mmseg_version": "0.30.0", "CLASSES": ("a", "b")}, "state_dict":
                official_upernet["state_dict"]}, path)
    net = load_upernet_checkpoint(_build(official_upernet["config"], seed=reload["seed"]), path).eval()
    x = official_upernet["inputs"][reload["input"]]
    with torch.no_grad():
        features = net.forward_features(x)
        assert rel_err(net.decode_head(features), reload["decode_logits"]) < TOLERANCE
        assert rel_err(net.auxiliary_head(features[2]), reload["aux_logits"]) < TOLERANCE
        assert rel_err(whole_logits(net, x), reload["whole_logits"]) < TOLERANCE


@pytest.mark.parametrize("variant, backbone", [("t", "overlock_t"), ("s", "overlock_s"), ("b", "overlock_b")])
def test_official_checkpoint_keys_and_shapes(official_upernet_keys, variant, backbone):
    expected = {k: list(v) for k, v in official_upernet_keys[f"upernet_overlock_{variant}"].items()}
    with torch.device("meta"):
        net = create_upernet(backbone, num_classes=150)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert list(ours) == list(expected)  # module order as well
