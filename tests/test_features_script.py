"""TorchScript of the feature extractors (issue 22): timm's ``features_only`` wrapper of every registered variant, in
both dense forms and at output strides 8, 16 and 32, scripts and gives exactly the eager outputs; so does a module
calling ``forward_intermediates`` of the classifier with each of its options."""
from __future__ import annotations

from typing import List, Tuple

import pytest
import timm
import torch
from torch import Tensor, nn

from test_one_computation import randomise

SMALL = ["test_overlock", "overlock_xt", "overlock_xt_reparam"]
LARGE = ["overlock_t", "overlock_s", "overlock_b", "overlock_t_reparam", "overlock_s_reparam", "overlock_b_reparam"]
VARIANTS = SMALL + [pytest.param(name, marks=pytest.mark.slow) for name in LARGE]


def _assert_scripted_equal(model: nn.Module, *inputs: Tensor) -> None:
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected, got = model(*inputs), scripted(*inputs)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_every_variant_is_covered():
    registered = set(timm.list_models(module="overlock"))
    assert registered == set(SMALL) | set(LARGE), "a new registered variant needs its scripting case here"


@pytest.mark.parametrize("dense_form", ["detection", "segmentation"])
@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_scripts_bitwise(name, dense_form):
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, features_only=True, dense_form=dense_form)).eval()
    _assert_scripted_equal(model, torch.randn(1, 3, 64, 96))


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("dense_form", ["detection", "segmentation"])
def test_dilated_features_only_scripts_bitwise(dense_form, output_stride):
    torch.manual_seed(0)
    model = timm.create_model("test_overlock", features_only=True, dense_form=dense_form, output_stride=output_stride)
    assert model.feature_info.reduction()[-1] == output_stride
    _assert_scripted_equal(randomise(model).eval(), torch.randn(2, 3, 64, 80))


@pytest.mark.parametrize("out_indices", [(0,), (1, 2), (2, 3), (-1,)], ids=str)
def test_selected_levels_script_bitwise(out_indices):
    """Fewer levels stop early (and prune the stages past them): the scripted wrapper takes the same path."""
    torch.manual_seed(0)
    model = timm.create_model("test_overlock", features_only=True, out_indices=out_indices)
    _assert_scripted_equal(randomise(model).eval(), torch.randn(1, 3, 64, 64))


class Intermediates(nn.Module):
    """Calls the classifier's ``forward_intermediates`` with every option, as a scripted caller would."""

    def __init__(self, model: nn.Module, indices: List[int], stop_early: bool):
        super().__init__()
        self.model, self.indices, self.stop_early = model, indices, stop_early

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        out = self.model.forward_intermediates(x, indices=self.indices, stop_early=self.stop_early)
        assert isinstance(out, tuple)
        final, levels = out
        only = self.model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert isinstance(only, list)
        return final, levels, only


@pytest.mark.parametrize("stop_early", [False, True])
def test_classifier_forward_intermediates_scripts_bitwise(stop_early):
    torch.manual_seed(0)
    classifier = randomise(timm.create_model("test_overlock", num_classes=5)).eval()
    caller = Intermediates(classifier, [0, 2], stop_early)
    scripted = torch.jit.script(caller)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = caller(x), scripted(x)
    assert torch.equal(got[0], expected[0])
    assert all(torch.equal(a, b) for a, b in zip(got[1] + got[2], expected[1] + expected[2]))
    assert [t.shape[1] for t in got[1]] == [classifier.feature_info[i]["num_chs"] for i in (0, 2)]
    assert [t.shape[1] for t in got[2]] == [classifier.feature_info[i]["num_chs"] for i in (2, 3)]
