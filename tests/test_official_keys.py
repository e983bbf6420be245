"""Every official variant has exactly the official state-dict keys and shapes (all sizes)."""
from __future__ import annotations

import pytest
import timm
import torch

VARIANTS = ("xt", "t", "s", "b")


def _build(entry: str):
    base = entry.removesuffix("_dense_backbone")
    kwargs = {"dense_form": "detection"} if entry.endswith("_dense_backbone") else {}
    with torch.device("meta"):
        model = timm.create_model(base, **kwargs)
    return model


@pytest.mark.parametrize("form", ["", "_reparam", "_dense_backbone"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_keys_and_shapes_match_official(official_keys, variant, form):
    entry = f"overlock_{variant}{form}"
    expected = {k: list(v) for k, v in official_keys[entry].items()}
    ours = {k: list(v.shape) for k, v in _build(entry).state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}


@pytest.mark.parametrize("variant", ("t", "s", "b"))
def test_segmentation_backbone_keys_match_official_upernet(official_upernet_keys, variant):
    expected = {
        k.removeprefix("backbone."): list(v)
        for k, v in official_upernet_keys[f"upernet_overlock_{variant}"].items()
        if k.startswith("backbone.")
    }
    with torch.device("meta"):
        model = timm.create_model(f"overlock_{variant}", dense_form="segmentation")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
