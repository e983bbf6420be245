"""Official checkpoints through timm's normal route: wrappers, strictness, errors, dense backbones."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import FIXTURE_INPUTS, rel_err

from overlock import CheckpointMismatchError

# test_overlock is the fixture's official configuration with 1000 classes; the fixture has 10
FIXTURE_CFG = dict(num_classes=10)


def _save(obj, tmp_path, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def _load(path, name="test_overlock", **kwargs):
    overlay = dict(file=path, **kwargs.pop("overlay", FIXTURE_CFG))
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"state_dict_ema": {f"module.{k}": v for k, v in sd.items()}, "state_dict": {}},
    ],
    ids=["bare", "state_dict", "model", "state_dict_ema+module"],
)
def test_official_checkpoint_loads_strictly_whatever_the_wrapper(official, tmp_path, wrap):
    model = _load(_save(wrap(official["state_dict"]), tmp_path), num_classes=10).eval()
    with torch.no_grad():
        for size in FIXTURE_INPUTS:
            assert rel_err(model(official["inputs"][size]), official["eval_logits"][size]) <= 1e-5


def test_reparam_checkpoint_into_deploy_form(official, tmp_path):
    model = _load(_save(official["reparam_state_dict"], tmp_path), num_classes=10, deploy=True).eval()
    with torch.no_grad():
        logits = model(official["inputs"]["64x96"])
    assert rel_err(logits, official["reparam_logits"]["64x96"]) <= 1e-5


def test_new_num_classes_drops_both_heads(official, tmp_path):
    model = _load(_save(official["state_dict"], tmp_path), num_classes=7).eval()
    assert model.head[4].weight.shape[0] == 7 and model.aux_head[2].weight.shape[0] == 7
    with torch.no_grad():
        focus, overview = model.forward_features_with_context(official["inputs"]["64x64"])
    assert rel_err(focus, official["eval_features"]["64x64"][0]) <= 1e-5
    assert rel_err(overview, official["eval_features"]["64x64"][1]) <= 1e-5


def test_detection_checkpoint_backbone_loads_into_features_only(official, tmp_path):
    """The backbone part of an mmdet/mmseg checkpoint, other keys ignored."""
    wrapped = {
        "meta": {"epoch": 12, "CLASSES": ("person", "car")},
        "state_dict": {
            **{f"backbone.{k}": v for k, v in official["dense_state_dict"].items()},
            "neck.lateral_convs.0.conv.weight": torch.zeros(4, 4, 1, 1),
            "rpn_head.rpn_cls.weight": torch.zeros(3, 4, 1, 1),
        },
    }
    model = _load(_save(wrapped, tmp_path), features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        for size in FIXTURE_INPUTS:
            levels = model(official["inputs"][size])
            for level, expected in zip(levels, official["dense_features"][size]):
                assert rel_err(level, expected) <= 1e-5


def test_features_only_out_indices(official, tmp_path):
    path = _save(official["dense_state_dict"], tmp_path)
    model = _load(path, features_only=True, out_indices=(1, 3)).eval()
    assert model.feature_info.channels() == [32, 96 + 24]
    with torch.no_grad():
        levels = model(official["inputs"]["224x160"])
    assert len(levels) == 2
    assert rel_err(levels[0], official["dense_features"]["224x160"][1]) <= 1e-5
    assert rel_err(levels[1], official["dense_features"]["224x160"][3]) <= 1e-5


def test_imagenet_checkpoint_into_features_only_keeps_fresh_dense_modules(official, tmp_path):
    model = _load(_save(official["state_dict"], tmp_path), features_only=True).eval()
    ours = model.model.state_dict()
    assert torch.equal(ours["patch_embed1.0.weight"], official["state_dict"]["patch_embed1.0.weight"])
    assert torch.equal(ours["extra_norm.0.weight"], torch.ones(16))  # LayerNorm init
    assert not any(k.startswith(("head.", "aux_head.")) for k in ours)


def test_mismatched_checkpoint_lists_keys(official, tmp_path):
    state = dict(official["state_dict"])
    del state["blocks1.0.dwconv.weight"]
    state["blocks9.0.extra.weight"] = torch.zeros(1)
    state["high_level_proj.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as info:
        _load(_save(state, tmp_path), num_classes=10)
    message = str(info.value)
    assert "missing keys: blocks1.0.dwconv.weight" in message
    assert "unexpected keys: blocks9.0.extra.weight" in message
    assert "high_level_proj.bias (5,) vs model (24,)" in message


def test_reparam_checkpoint_into_training_form_names_the_fix(official, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="'_reparam' variant"):
        _load(_save(official["reparam_state_dict"], tmp_path), num_classes=10)


def test_checkpoint_of_another_size_does_not_fit(official, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        _load(_save(official["state_dict"], tmp_path), name="overlock_xt", overlay={})


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        _load(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint file"):
        _load(str(bad))
