"""Triton kernels of the neighbourhood weighted sum (``overlock.ops.triton_av``) against the reference op.

Without a GPU the kernels run in Triton's CPU interpreter. Triton fixes that mode when the kernels are
decorated (at the import of ``triton_av``) and the pytest process may already have imported it compiled,
so the interpreter checks run in subprocesses started with ``TRITON_INTERPRET=1``; this file is their
script. The interpreter is slow (about a millisecond per block operation), so the default cases are small
and bigger ones are marked ``slow``. With CUDA the ``gpu`` tests run the compiled kernels in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overlock.ops import triton_av
from overlock.ops.reference import neighbourhood_weighted_sum

# Largest error relative to the largest magnitude of the float64 reference (computed from the same,
# already rounded inputs): accumulation is fp32, so only the output rounding shows in fp16 / bf16.
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}

# name -> (B, G, H, W, C, K, dtype, layout, big_tiles). layout 'permuted' gives every tensor its own
# non-contiguous stride order; big_tiles lifts the tile shrinking that fills a GPU with small launches,
# so the interpreter runs fewer programs (the shrunk path keeps its own cases).
FAST_CASES = {
    "k3_exact_c1_b2": (2, 1, 3, 3, 1, 3, "float32", "contiguous", True),
    "k5_13x20_c3_g2": (1, 2, 13, 20, 3, 5, "float32", "contiguous", True),
    "k7_17x18_c33_tiled": (1, 1, 17, 18, 33, 7, "float32", "contiguous", True),
    "k13_exact_c16": (1, 1, 13, 13, 16, 13, "float32", "contiguous", True),
    "k17_exact_c3": (1, 1, 17, 17, 3, 17, "float32", "contiguous", True),
    "k5_permuted_b2_g2": (2, 2, 9, 11, 16, 5, "float32", "permuted", True),
    "k3_shrunk_tiles": (1, 1, 10, 12, 4, 3, "float32", "contiguous", False),
    "k3_float16": (1, 2, 8, 9, 8, 3, "float16", "contiguous", True),
    "k5_bfloat16_permuted": (1, 1, 9, 8, 5, 5, "bfloat16", "permuted", True),
}
SLOW_CASES = {
    **{f"k{k}_exact_c3_b2": (2, 1, k, k, 3, k, "float32", "contiguous", False) for k in range(3, 19, 2)},
    **{f"k{k}_nonsquare_c16": (1, 2, k + 4, k + 9, 16, k, "float32", "permuted", False) for k in (5, 9, 13, 17)},
    "k7_c64_20x23": (1, 1, 20, 23, 64, 7, "float32", "contiguous", False),
    "k17_18x25_c33": (1, 1, 18, 25, 33, 17, "float32", "contiguous", True),
    "k13_float16_permuted": (2, 1, 15, 16, 16, 13, "float16", "permuted", False),
    "k7_bfloat16": (1, 2, 12, 14, 24, 7, "bfloat16", "contiguous", False),
}


def _make_inputs(case: tuple, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Softmaxed weights, values and an output gradient for ``case``, in its dtype and layout."""
    batch, groups, height, width, channels, k, dtype, layout, _ = case
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    if layout == "permuted":  # three different stride orders, none contiguous
        attn = torch.randn(batch, height, width, groups, k * k, generator=gen).permute(0, 3, 1, 2, 4)
        value = torch.randn(batch, height, width, groups, channels, generator=gen).permute(0, 3, 1, 2, 4)
        grad_out = torch.randn(groups, channels, batch, width, height, generator=gen).permute(2, 0, 4, 3, 1)
    else:
        attn = torch.randn(batch, groups, height, width, k * k, generator=gen)
        value = torch.randn(batch, groups, height, width, channels, generator=gen)
        grad_out = torch.randn(batch, groups, height, width, channels, generator=gen)
    attn = attn.softmax(-1)
    return (*(t.to(device=device, dtype=dtype) for t in (attn, value, grad_out)), k)


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def check_case(case: tuple, device: str) -> dict:
    """Run the kernels on ``case`` and report their errors against the float64 reference and layout checks."""
    attn, value, grad_out, k = _make_inputs(case, device)
    out = triton_av.av_forward(attn, value, k)
    grad_attn, grad_value = triton_av.av_backward(grad_out, attn, value, k)

    ref_attn = attn.detach().double().requires_grad_()
    ref_value = value.detach().double().requires_grad_()
    ref_out = neighbourhood_weighted_sum(ref_attn, ref_value, k)
    ref_out.backward(grad_out.double())
    return {
        "out": _rel_err(out, ref_out.detach()),
        "grad_attn": _rel_err(grad_attn, ref_attn.grad),
        "grad_value": _rel_err(grad_value, ref_value.grad),
        "dtypes": (out.dtype, grad_attn.dtype, grad_value.dtype) == (value.dtype, attn.dtype, value.dtype),
        "layouts": out.stride() == value.stride()
        and grad_attn.stride() == attn.stride()
        and grad_value.stride() == value.stride(),
        "available": triton_av.triton_available(value),
    }


def _assert_case(name: str, case: tuple, result: dict) -> None:
    tol = TOLERANCE[case[6]]
    for key in ("out", "grad_attn", "grad_value"):
        assert result[key] <= tol, f"{name}: {key} relative error {result[key]:.3g} > {tol:g}"
    assert result["dtypes"], f"{name}: outputs do not keep the input dtypes"
    assert result["layouts"], f"{name}: outputs do not keep the input memory layouts"
    assert result["available"], f"{name}: triton_available() was False where the kernels ran"


# --- CPU interpreter, in subprocesses ---------------------------------------------------------------


def _worker(names: list[str]) -> None:
    """Subprocess entry: run the named cases in the interpreter and print their results as JSON."""
    assert triton_av._INTERPRETED, "the worker must start with TRITON_INTERPRET=1"
    cases = {**FAST_CASES, **SLOW_CASES}
    results = {}
    for name in names:
        # big_tiles: no shrinking for occupancy, which only makes the interpreter run more programs
        triton_av._TARGET_PROGRAMS = 1 if cases[name][-1] else 1024
        results[name] = check_case(cases[name], "cpu")
    print(json.dumps(results))


def _interpreter_cost(case: tuple) -> int:
    """Rough interpreter time of a case: programs (maps x 16 x 16 tiles) times K*K loop steps."""
    batch, groups, height, width, _, k = case[:6]
    return batch * groups * -(-height // 16) * -(-width // 16) * k * k


def _run_interpreted(cases: dict, processes: int = 2) -> dict:
    """Results of ``cases`` from ``processes`` concurrent interpreter subprocesses (balanced by cost)."""
    if triton_av.triton is None:
        pytest.skip("triton cannot be imported")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    shares: list[list[str]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for name in sorted(cases, key=lambda n: -_interpreter_cost(cases[n])):  # costliest first, to the lightest share
        p = loads.index(min(loads))
        shares[p].append(name)
        loads[p] += _interpreter_cost(cases[name])
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *share],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for share in shares if share
    ]
    results = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=3600)
        assert proc.returncode == 0, f"interpreter worker failed:\n{stderr[-4000:]}"
        results.update(json.loads(stdout.strip().splitlines()[-1]))
    return results


@pytest.fixture(scope="module")
def fast_results() -> dict:
    return _run_interpreted(FAST_CASES)


@pytest.fixture(scope="module")
def slow_results() -> dict:
    return _run_interpreted(SLOW_CASES)


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_interpreter_matches_reference(name: str, fast_results: dict) -> None:
    _assert_case(name, FAST_CASES[name], fast_results[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_interpreter_matches_reference_slow(name: str, slow_results: dict) -> None:
    _assert_case(name, SLOW_CASES[name], slow_results[name])


# --- in-process checks that launch nothing -----------------------------------------------------------


def test_triton_available_never_raises() -> None:
    assert triton_av.triton_available(object()) is False
    cpu = torch.zeros(1)
    # CPU tensors only in interpreter mode (fixed when triton_av was imported), never without triton
    assert triton_av.triton_available(cpu) is (triton_av.triton is not None and triton_av._INTERPRETED)


def test_rejects_bad_shapes() -> None:
    attn, value = torch.rand(1, 2, 5, 6, 9), torch.rand(1, 2, 5, 6, 4)
    with pytest.raises(ValueError, match="odd"):
        triton_av.av_forward(torch.rand(1, 2, 5, 6, 16), value, 4)
    with pytest.raises(ValueError, match="does not match"):
        triton_av.av_forward(torch.rand(1, 2, 5, 6, 25), value, 3)
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        triton_av.av_forward(torch.rand(1, 2, 5, 6, 49), value, 7)
    with pytest.raises(ValueError, match="grad_out"):
        triton_av.av_backward(torch.rand(1, 2, 5, 6, 3), attn, value, 3)


def test_empty_inputs_launch_nothing() -> None:
    attn, value = torch.rand(0, 2, 5, 6, 9), torch.rand(0, 2, 5, 6, 4)
    assert triton_av.av_forward(attn, value, 3).shape == value.shape
    attn, value = torch.rand(1, 2, 5, 6, 9), torch.rand(1, 2, 5, 6, 0)
    grad_attn, grad_value = triton_av.av_backward(torch.rand(1, 2, 5, 6, 0), attn, value, 3)
    assert grad_value.shape == value.shape and torch.equal(grad_attn, torch.zeros_like(attn))


def test_int32_slice_offsets_guarded() -> None:
    """Only a tensor whose (batch, group) slice spans 2**31 elements or more is copied to a contiguous layout."""
    permuted = torch.empty_strided((2, 4, 50, 60, 16), (4 * 50 * 60 * 16, 16, 60 * 4 * 16, 4 * 16, 1), device="meta")
    assert triton_av._addressable(permuted) is permuted
    assert triton_av._empty_like(permuted).stride() == permuted.stride()
    # 2**32 elements, batch innermost: one slice spans about 2**32 elements
    huge = torch.empty((32, 32, 64, 1, 2**16), device="meta").permute(4, 3, 0, 1, 2)
    assert triton_av._addressable(huge).is_contiguous()
    assert triton_av._empty_like(huge).is_contiguous()


def test_launch_config_covers_real_shapes() -> None:
    """Tiles hold at most ~4096 accumulators, stay inside small maps and shrink only for small launches."""
    for maps, height, width, channels in [(64, 100, 160, 32), (8, 56, 56, 16), (1, 7, 7, 48), (256, 14, 14, 64)]:
        cfg = triton_av._launch_config(maps, height, width, channels)
        meta = cfg["meta"]
        assert meta["BLOCK_C"] >= channels and meta["TILE_H"] * meta["TILE_W"] * meta["BLOCK_C"] <= 4096
        assert meta["TILE_H"] <= triton_av._next_pow2(height) and meta["TILE_W"] <= triton_av._next_pow2(width)
        assert cfg["grid"][0] == maps * cfg["tiles_per_map"]
    big = triton_av._launch_config(64, 100, 160, 32)["meta"]
    assert (big["TILE_H"], big["TILE_W"]) == (8, 16)  # plenty of programs: the full 128-query tile


# --- real GPU ----------------------------------------------------------------------------------------

GPU_CASES = {
    "k13_56x56_c16_b2_g4": (2, 4, 56, 56, 16, 13, "float32", "contiguous", True),
    "k17_200x300_c32": (1, 2, 200, 300, 32, 17, "float32", "contiguous", True),
    "k5_batch256_14x14": (256, 8, 14, 14, 16, 5, "float32", "permuted", True),
    "k7_7x7_c48": (4, 4, 7, 7, 48, 7, "float32", "contiguous", True),
    "k15_c64_permuted": (2, 3, 30, 41, 64, 15, "float32", "permuted", True),
    "k13_float16": (2, 4, 40, 50, 32, 13, "float16", "permuted", True),
    "k13_bfloat16": (2, 4, 40, 50, 32, 13, "bfloat16", "contiguous", True),
    "k3_c1": (2, 2, 17, 33, 1, 3, "float32", "contiguous", True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_matches_reference(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    if triton_av.triton is None:
        pytest.skip("triton cannot be imported")
    if triton_av._INTERPRETED:
        pytest.skip("TRITON_INTERPRET is set: the kernels would run in the interpreter, not on the GPU")
    _assert_case(name, GPU_CASES[name], check_case(GPU_CASES[name], "cuda"))


if __name__ == "__main__":
    _worker(sys.argv[1:])
