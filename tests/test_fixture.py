"""Numerical identity with the official implementation (../shared/fixtures/official_tiny.pt)."""
from __future__ import annotations

import pytest
import torch
from conftest import FIXTURE_INPUTS, rel_err

from overlock import OverLoCK

TOL = 1e-5


@pytest.fixture(scope="module")
def eval_model(official, official_kwargs) -> OverLoCK:
    model = OverLoCK(**official_kwargs)
    model.load_state_dict(official["state_dict"], strict=True)
    return model.eval()


@pytest.mark.parametrize("size", FIXTURE_INPUTS)
def test_eval_logits_and_features(official, eval_model, size):
    x = official["inputs"][size]
    with torch.no_grad():
        logits = eval_model(x)
        focus, overview = eval_model.forward_features_with_context(x)
    assert rel_err(logits, official["eval_logits"][size]) <= TOL
    expected_focus, expected_overview = official["eval_features"][size]
    assert focus.shape == expected_focus.shape and overview.shape == expected_overview.shape
    assert rel_err(focus, expected_focus) <= TOL
    assert rel_err(overview, expected_overview) <= TOL


def test_train_mode_main_and_aux_logits(official, official_kwargs):
    model = OverLoCK(**official_kwargs)
    model.load_state_dict(official["state_dict"])
    model.train()
    main, aux = model(official["inputs"][official["train_input"]])
    assert rel_err(main, official["train_main"]) <= TOL
    assert rel_err(aux, official["train_aux"]) <= TOL


@pytest.mark.parametrize("size", FIXTURE_INPUTS)
def test_reparam_checkpoint_logits(official, official_kwargs, size):
    model = OverLoCK(**official_kwargs, deploy=True)
    model.load_state_dict(official["reparam_state_dict"], strict=True)
    with torch.no_grad():
        logits = model.eval()(official["inputs"][size])
    assert rel_err(logits, official["reparam_logits"][size]) <= TOL


def test_reparameterize_matches_official_conversion(official, official_kwargs):
    model = OverLoCK(**official_kwargs)
    model.load_state_dict(official["state_dict"])
    model.eval().reparameterize()
    ours, theirs = model.state_dict(), official["reparam_state_dict"]
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)
    with torch.no_grad():
        for size in FIXTURE_INPUTS:
            assert rel_err(model(official["inputs"][size]), official["reparam_logits"][size]) <= TOL


@pytest.mark.parametrize("size", FIXTURE_INPUTS)
def test_dense_pyramid(official, official_kwargs, size):
    model = OverLoCK(**official_kwargs, dense_form="detection")
    model.load_state_dict(official["dense_state_dict"], strict=True)
    with torch.no_grad():
        levels = model.eval()(official["inputs"][size])
    assert len(levels) == 4
    for level, expected in zip(levels, official["dense_features"][size]):
        assert level.shape == expected.shape
        assert rel_err(level, expected) <= TOL
