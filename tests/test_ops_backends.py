"""Every ContMix backend against the reference oracle, the custom-op registration and the backend choice.

``contmix_reference`` (pure PyTorch, itself checked against a brute-force loop in
test_contmix_reference.py) is the oracle; backends run through the public ``contmix_apply``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from overlock.ops import available_backends, contmix_apply, contmix_reference, resolve_backend
from overlock.ops import cpu, reference
from overlock.ops.backends import TRITON_MODULE
from overlock.ops.custom_op import neighbourhood_av
from overlock.ops.layout import is_planar
from probes import LargestTensor, value_view

CPU_BACKENDS = available_backends(torch.empty(1, 1, 1, 1, 1))
FAST_BACKENDS = [name for name in CPU_BACKENDS if name != "reference"]


def _inputs(b, g, h, w, c, k, layout="planar", dtype=torch.float64, seed=0):
    """Logits, a value view in the given layout, and a relative position bias table."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, g, h, w, k * k, generator=gen, dtype=dtype)
    if layout == "channels_last":  # logits of a transposed map: a non-contiguous view as well
        logits = logits.transpose(2, 3).contiguous().transpose(2, 3)
    value = value_view(b, g, h, w, c, layout, gen, dtype)
    rpb = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype)
    return logits, value, rpb


def _grads(fn, logits, value, rpb, grad_out):
    args = [t.detach().requires_grad_() for t in (logits, value, rpb)]
    out = fn(args[0], args[1], args[2])
    return (out, *torch.autograd.grad(out, args, grad_out, allow_unused=True, materialize_grads=True))


SHAPES = [  # (B, G, H, W, C, K)
    (1, 1, 3, 3, 1, 3),  # map exactly the kernel
    (1, 1, 17, 17, 2, 17),
    (2, 2, 5, 8, 3, 5),
    (1, 3, 9, 6, 64, 5),  # 64 channels a group
    (1, 2, 21, 11, 5, 9),  # taller than wide
    (1, 2, 13, 40, 7, 13),  # the detection aspect, large kernel
    (1, 1, 101, 19, 2, 3),  # more than 100 rows
    (2, 1, 12, 104, 3, 11),  # more than 100 columns
    (1, 1, 16, 30, 16, 15),
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["planar", "channels_last", "contiguous"])
def test_forward_backward_match_reference(backend, shape, layout):
    logits, value, rpb = _inputs(*shape, layout=layout)
    k = shape[-1]
    grad_out = torch.randn(value.shape, dtype=value.dtype)
    for with_rpb in (True, False):
        ours = _grads(lambda l, v, r: contmix_apply(l, v, k, r if with_rpb else None, backend=backend),
                      logits, value, rpb, grad_out)
        expected = _grads(lambda l, v, r: contmix_reference(l, v, k, r if with_rpb else None),
                          logits, value, rpb, grad_out)
        for name, a, e in zip(("out", "grad_logits", "grad_value", "grad_rpb"), ours, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_relative_error(backend):
    """float32 backends within 1e-5 (relative to the largest magnitude) of the float64 oracle."""
    logits, value, rpb = _inputs(1, 2, 16, 27, 16, 13)
    grad_out = torch.randn(value.shape, dtype=value.dtype)
    expected = _grads(lambda l, v, r: contmix_reference(l, v, 13, r), logits, value, rpb, grad_out)
    ours = _grads(lambda l, v, r: contmix_apply(l, v, 13, r, backend=backend),
                  logits.float(), value.float(), rpb.float(), grad_out.float())
    for a, e in zip(ours, expected):
        assert a.dtype == torch.float32
        assert ((a.double() - e).abs().max() / e.abs().max()).item() < 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    logits, value, rpb = (t.requires_grad_() for t in _inputs(1, 1, 4, 5, 2, 3))
    assert torch.autograd.gradcheck(lambda l, v, r: contmix_apply(l, v, 3, r, backend=backend), (logits, value, rpb))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_op_registrations(backend):
    """Fake tensor, schema and autograd registrations agree with the real kernels (torch.library.opcheck)."""
    logits, value, _ = _inputs(2, 2, 6, 9, 3, 5, layout="planar", dtype=torch.float32)
    attn = logits.softmax(-1).requires_grad_()
    torch.library.opcheck(neighbourhood_av, (attn, value.requires_grad_(), 5, backend))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
def test_output_and_value_grad_keep_the_value_layout(backend, layout):
    logits, value, rpb = _inputs(1, 2, 7, 8, 3, 5, layout=layout, dtype=torch.float32)
    value.requires_grad_()
    out = contmix_apply(logits, value, 5, rpb, backend=backend)
    (grad_value,) = torch.autograd.grad(out, value, torch.randn_like(out))
    assert is_planar(out) == is_planar(grad_value) == (layout == "planar")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16_autocast(backend):
    """Under CPU autocast the logits come out of a linear layer in bf16; results follow bf16 precision."""
    logits, value, rpb = _inputs(2, 2, 9, 11, 8, 5, dtype=torch.float32)
    proj = torch.nn.Linear(25, 25)
    value_bf16 = value.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = contmix_apply(proj(logits), value_bf16, 5, rpb, backend=backend)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert value_bf16.grad.dtype == torch.bfloat16 and proj.weight.grad is not None
    with torch.no_grad():
        expected = contmix_reference(proj(logits).bfloat16().float(), value_bf16.float(), 5, rpb)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_cpu_kernels_memory_bounded():
    """No intermediate of the CPU kernels, forward or backward, outgrows the weights or the values
    (a K^2 copy of the value here is 49 x 16 channels = 16x the weights)."""
    attn = torch.randn(1, 2, 20, 24, 49).softmax(-1)
    value = torch.randn(1, 2, 20, 24, 16)
    with LargestTensor() as tracker:
        out = cpu.av_forward(attn, value, 7)
        cpu.av_backward(torch.randn_like(out), attn, value, 7)
    assert tracker.largest <= max(attn.numel(), value.numel())


def test_automatic_choice_and_overrides():
    value = torch.randn(1, 1, 5, 5, 2)
    assert set(available_backends()) >= {"reference", "cpu", "triton"}
    assert resolve_backend("auto", value) == "cpu"
    assert resolve_backend("auto", value.to("meta")) == "reference"  # no fast kernel for this device
    assert resolve_backend("reference", value) == "reference"


def test_clear_errors():
    value = torch.randn(1, 1, 5, 5, 2)
    with pytest.raises(ValueError, match="unknown ContMix backend 'fast'; choose one of: auto, reference, cpu"):
        resolve_backend("fast", value)
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run on a torch.float32 tensor on meta: "
                       "it needs a CPU tensor"):
        resolve_backend("cpu", value.to("meta"))
    with pytest.raises(ValueError, match="unknown ContMix backend 'fast'"):
        contmix_apply(torch.randn(1, 1, 5, 5, 9), value, 3, backend="fast")


def test_triton_unavailable_without_its_module(monkeypatch):
    monkeypatch.setitem(sys.modules, TRITON_MODULE, None)  # makes the import raise ImportError
    value = torch.randn(1, 1, 5, 5, 2)
    assert "triton" not in available_backends(value)
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run .* needs a CUDA tensor"):
        resolve_backend("triton", value)


def test_triton_wiring_with_stand_in(monkeypatch):
    """The 'triton' backend calls ``triton_av``'s three functions; a stand-in built on the reference kernels
    checks the wiring without triton."""
    calls = []

    def record(name, fn):
        def wrapped(*args):
            calls.append(name)
            return fn(*args)
        return wrapped

    stand_in = types.ModuleType(TRITON_MODULE)
    stand_in.triton_available = lambda value: value.dtype == torch.float64
    stand_in.av_forward = record("forward", reference.av_forward)
    stand_in.av_backward = record("backward", reference.av_backward)
    monkeypatch.setitem(sys.modules, TRITON_MODULE, stand_in)

    logits, value, rpb = _inputs(1, 2, 7, 9, 3, 5)
    assert "triton" in available_backends(value) and "triton" not in available_backends(value.float())
    assert resolve_backend("auto", value) == "cpu"  # triton is chosen automatically on CUDA only
    grad_out = torch.randn(value.shape, dtype=value.dtype)
    ours = _grads(lambda l, v, r: contmix_apply(l, v, 5, r, backend="triton"), logits, value, rpb, grad_out)
    expected = _grads(lambda l, v, r: contmix_reference(l, v, 5, r), logits, value, rpb, grad_out)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)
    assert calls == ["forward", "backward"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    logits, value, rpb = _inputs(1, 2, 7, 9, 4, 3, dtype=torch.float32)

    def fn(l, v, r):
        return contmix_apply(l * 0.5, v + 1, 3, r, backend=backend).square().sum()

    args = [t.requires_grad_() for t in (logits, value, rpb)]
    compiled = torch.compile(fn, fullgraph=True)
    ours = torch.autograd.grad(compiled(*args), args)
    expected = torch.autograd.grad(fn(*args), args)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.slow
def test_real_triton_kernels_in_interpreter():
    """``triton_av`` itself (Triton's CPU interpreter, fresh process) against the reference."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from overlock.ops import contmix_apply, contmix_reference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "l = torch.randn(1, 2, 7, 9, 25, generator=g, requires_grad=True)\n"
        "v = torch.randn(1, 2, 3, 7, 9, generator=g).permute(0, 1, 3, 4, 2).requires_grad_()\n"
        "r = torch.randn(2, 9, 9, generator=g, requires_grad=True)\n"
        "go = torch.randn(1, 2, 7, 9, 3, generator=g)\n"
        "a = contmix_apply(l, v, 5, r, backend='triton')\n"
        "ga = torch.autograd.grad(a, (l, v, r), go)\n"
        "e = contmix_reference(l, v, 5, r)\n"
        "ge = torch.autograd.grad(e, (l, v, r), go)\n"
        "for x, y in zip((a, *ga), (e, *ge)):\n"
        "    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
@pytest.mark.parametrize(
    "shape", [(2, 2, 5, 8, 3, 5), (1, 2, 13, 40, 16, 13), (1, 3, 30, 30, 64, 7), (1, 1, 101, 19, 2, 3),
              (2, 1, 12, 104, 3, 11), (1, 1, 17, 17, 2, 17)],
    ids=str,
)
def test_cuda_backends_match_reference(shape, layout, dtype):
    """Every CUDA backend, forward and backward, against the float64 oracle (bf16 to bf16 precision)."""
    logits, value, rpb = _inputs(*shape, layout=layout)
    k = shape[-1]
    grad_out = torch.randn(value.shape, dtype=value.dtype)
    expected = _grads(lambda l, v, r: contmix_reference(l, v, k, r), logits, value, rpb, grad_out)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    cuda = [t.to("cuda", dtype) for t in (logits, value, rpb, grad_out)]
    for backend in available_backends(cuda[1]):
        if backend == "reference":
            continue
        ours = _grads(lambda l, v, r: contmix_apply(l, v, k, r, backend=backend), *cuda)
        for name, a, e in zip(("out", "grad_logits", "grad_value", "grad_rpb"), ours, expected):
            assert a.dtype == dtype
            err = ((a.double().cpu() - e).abs().max() / e.abs().max()).item()
            assert err <= tol, f"{backend} {name}: {err}"
