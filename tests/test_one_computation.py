"""One model, one computation: what the plain model computes depends only on its modules and its input, never
on whether it is traced, scripted, exported or run without gradients (bitwise, not within a tolerance)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.fx
from torch import nn

NAME = "test_overlock"
SIZES = [(1, 3, 64, 80), (2, 3, 40, 33)]  # the second makes every Focus-Net map smaller than its kernel


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, GRN, LayerScale and bias-table values (fresh ones are zeros and ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            for name, p in module.named_parameters(recurse=False):
                if name in ("gamma", "beta") or name.startswith("rpb") or (name == "bias" and p.dim() == 1):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomise(timm.create_model(NAME)).eval()


def _timm_fx(model: nn.Module, train: bool = False) -> nn.Module:
    """The model traced as timm's tests trace it (its leaf modules and functions), returning its output node."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer

    tracer = NodePathTracer(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    model.train(train)
    return torch.fx.GraphModule(model, tracer.trace(model))


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_fx_traced_output_is_bitwise_equal(model, size):
    x = torch.randn(*size)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(_timm_fx(model)(x), expected)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), expected)


def test_fx_traced_train_mode_is_bitwise_equal():
    torch.manual_seed(0)
    model = randomise(timm.create_model(NAME, num_classes=7))
    traced = _timm_fx(model, train=True)
    x = torch.randn(2, 3, 64, 64)
    main, aux = model.train()(x)
    traced_main, traced_aux = traced(x)
    assert torch.equal(traced_main, main) and torch.equal(traced_aux, aux)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_scripted_output_is_bitwise_equal(model, size):
    x = torch.randn(*size)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


def test_gradient_mode_does_not_change_the_output(model):
    x = torch.randn(2, 3, 64, 80)
    with_grad = model(x)
    with torch.no_grad():
        without = model(x)
    with torch.inference_mode():
        inference = model(x)
    assert torch.equal(with_grad, without) and torch.equal(without, inference)


def test_exported_program_is_bitwise_equal(model):
    x = torch.randn(1, 3, 64, 80)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x), model(x))


def test_dense_backbone_traces_and_exports():
    torch.manual_seed(0)
    model = randomise(timm.create_model(NAME, dense_form="detection")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        for levels in (_timm_fx(model)(x), torch.export.export(model, (x,)).module()(x)):
            assert len(levels) == 4 and all(torch.equal(a, b) for a, b in zip(levels, expected))
