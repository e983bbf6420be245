"""torch.export programs of the deploy form for any batch and image size (the same outputs, bit for bit), the resize
of small maps without a branch (the official sizes), and converted models refused."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from overlock.export import deploy_form, export_program, relative_error
from overlock.layers.contmix import resized_size
from test_one_computation import randomise


def official_resized_size(height: int, width: int, k: int) -> tuple[int, int]:
    """The official code's branch (``resize_for_kernel``)."""
    if min(height, width) >= k:
        return height, width
    return (k, int(k / height * width)) if height < width else (int(k / width * height), k)


def test_branch_free_resized_size_is_the_official_one():
    """Every map up to 60 x 60 and every odd kernel the models use (3-19), except the two square maps where the
    official code's float rounding gives a side of K - 1 and then fails on its own kernel."""
    differ = [(h, w, k) for k in range(3, 20, 2) for h in range(1, 61) for w in range(1, 61)
              if resized_size(h, w, k) != official_resized_size(h, w, k)]
    assert differ == [(11, 11, 15), (13, 13, 15)]
    assert all(official_resized_size(h, w, k)[0] == k - 1 for h, w, k in differ)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """test_overlock (the official kernel sizes, 13 and 7 in the Focus-Net) with non-trivial BN and bias values."""
    torch.manual_seed(0)
    return randomise(timm.create_model("test_overlock")).eval()


# 224 x 224; non-square with a stage-3 map (14 x 10) smaller than its 13 x 13 kernel; every Focus map too small
SIZES = [(1, 224, 224), (2, 224, 160), (3, 40, 33)]


def test_program_reloads_and_gives_the_same_outputs_at_any_size(model, tmp_path):
    """Bitwise the deploy form's outputs, at sizes with and without resized maps (where none is resized, the
    program's interpolation to the same size and pooling back are exact copies)."""
    path = export_program(model, tmp_path / "model.pt2", (3, 64, 64))
    program = torch.export.load(str(path)).module()
    deployed = deploy_form(model)
    for batch, height, width in SIZES:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            assert torch.equal(program(x), deployed(x))
            assert relative_error(program(x), model(x)) <= 1e-5


def test_converted_models_are_refused(model):
    from overlock import optimize_for_inference

    with pytest.raises(ValueError, match="export the plain model"):
        deploy_form(optimize_for_inference(model))
