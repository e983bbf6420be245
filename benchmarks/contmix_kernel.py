"""Benchmark of the ContMix kernel application: our backends against the unfold approach and the reference.

Times ``rpb add + softmax + neighbourhood weighted sum`` (forward, and forward+backward) at two
OverLoCK-XT stage-3 shapes: (a) batch 8 at 224 px (14x14 map) and (b) one 800x1280 detection image
(50x80 map), each with the large kernel 13 and the small kernel 5, 8 groups of 16 channels. Approaches:

* ``unfold``: the official fallback without NATTEN, re-implemented here from its description: replicate
  pad, ``F.unfold`` (a K^2-times copy of the value), einsum over the K^2 neighbours. Its border handling
  (padding) differs from the shifted windows, which does not matter for timing.
* ``reference``: ``overlock.ops.contmix_reference``, the test oracle.
* every backend of ``contmix_apply`` that can run on the tensors (``reference`` excepted).

Approaches are timed round-robin in one process (medians, so load from other processes hits all
alike). Peak memory is the growth of the peak resident set (Linux ``VmHWM``) of a fresh subprocess per approach
and shape over one forward+backward (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA).

    python benchmarks/contmix_kernel.py --threads 2 --iters 5
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from overlock.ops import available_backends, contmix_apply, contmix_reference, relative_position_bias

# name -> (batch, groups, height, width, channels a group, kernel)
SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "a: 224px b8 14x14 K13": (8, 8, 14, 14, 16, 13),
    "a: 224px b8 14x14 K5": (8, 8, 14, 14, 16, 5),
    "b: 800x1280 b1 50x80 K13": (1, 8, 50, 80, 16, 13),
    "b: 800x1280 b1 50x80 K5": (1, 8, 50, 80, 16, 5),
}

Approach = Callable[[Tensor, Tensor, int, Tensor], Tensor]


def unfold_fallback(logits: Tensor, value: Tensor, kernel_size: int, rpb: Tensor) -> Tensor:
    """Replicate-pad + unfold + einsum: materialises every query's K*K neighbours (K^2 x the value)."""
    b, g, h, w, c = value.shape
    k = kernel_size
    logits = logits + relative_position_bias(rpb, h, w, k).unsqueeze(0)
    attn = logits.softmax(-1)
    maps = value.permute(0, 1, 4, 2, 3).reshape(b, g * c, h, w)
    windows = F.unfold(F.pad(maps, (k // 2,) * 4, mode="replicate"), k).view(b, g, c, k * k, h, w)
    return torch.einsum("bghwn,bgcnhw->bghwc", attn, windows)


def approaches(value: Tensor) -> dict[str, Approach]:
    found: dict[str, Approach] = {"unfold": unfold_fallback, "reference": contmix_reference}
    for name in available_backends(value):
        if name != "reference":
            found[name] = lambda l, v, k, r, name=name: contmix_apply(l, v, k, r, backend=name)
    return found


def make_inputs(shape: tuple[int, ...], device: str, grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, an NCHW-derived value view (as the ContMix module passes it), and the bias table."""
    b, g, h, w, c, k = shape
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(b, g, h, w, k * k, generator=gen).to(device)
    value = torch.randn(b, 2, g, c, h, w, generator=gen).to(device).permute(1, 0, 2, 4, 5, 3)[1]
    rpb = (0.02 * torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen)).to(device)
    if grad:
        logits.requires_grad_()
        value.requires_grad_()
        rpb.requires_grad_()
    return logits, value, rpb


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _run(fn: Approach, inputs: tuple[Tensor, Tensor, Tensor], kernel_size: int, backward: bool) -> None:
    logits, value, rpb = inputs
    if backward:
        fn(logits, value, kernel_size, rpb).sum().backward()
    else:
        with torch.no_grad():
            fn(logits, value, kernel_size, rpb)


def time_shape(shape: tuple[int, ...], device: str, iters: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median forward and forward+backward milliseconds of every approach, measured round-robin."""
    kernel_size = shape[-1]
    inputs = make_inputs(shape, device, grad=True)
    fns = approaches(inputs[1])
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for step in range(warmup + iters):
        for name, fn in fns.items():
            for backward, bucket in ((False, samples[name][0]), (True, samples[name][1])):
                _sync(device)
                start = time.perf_counter()
                _run(fn, inputs, kernel_size, backward)
                _sync(device)
                if step >= warmup:
                    bucket.append((time.perf_counter() - start) * 1e3)
    return {name: (_median(fwd), _median(both)) for name, (fwd, both) in samples.items()}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def peak_memory_mb(shape: tuple[int, ...], approach: str, device: str, threads: int) -> float:
    """Extra peak memory (MB) of one forward+backward, in a fresh process on CPU."""
    if device == "cuda":
        inputs = make_inputs(shape, device, grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _run(approaches(inputs[1])[approach], inputs, shape[-1], backward=True)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    probe = json.dumps({"shape": shape, "approach": approach, "threads": threads})
    command = [sys.executable, __file__, "--memory-probe", probe]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _memory_probe(spec: str) -> None:
    """Child process: print the growth of peak RSS (MB) over one forward+backward.

    Linux carries ``ru_maxrss`` over from the parent across fork and exec, so the per-process
    high-water mark ``VmHWM`` is read instead, reset just before the measured run.
    """
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    shape = tuple(args["shape"])
    inputs = make_inputs(shape, "cpu", grad=True)
    fn = approaches(inputs[1])[args["approach"]]
    small = make_inputs((1, 1, shape[-1], shape[-1], 1, shape[-1]), "cpu", grad=True)
    _run(fn, small, shape[-1], backward=True)  # loads code paths and libraries before the baseline
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set
    base = _status_kb("VmRSS")
    _run(fn, inputs, shape[-1], backward=True)
    print((_status_kb("VmHWM") - base) / 1024)


def report(device: str, iters: int, warmup: int, threads: int, memory: bool) -> None:
    header = f"{'shape':28s} {'approach':10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'fwd x':>7s} {'f+b x':>7s}"
    print(f"\n## {device} ({torch.get_num_threads()} threads, {iters} iterations, medians; x = speed-up vs unfold)")
    print(header + (f" {'peak MB':>8s}" if memory else ""))
    for label, shape in SHAPES.items():
        times = time_shape(shape, device, iters, warmup)
        base_fwd, base_both = times["unfold"]
        for name, (fwd, both) in times.items():
            line = f"{label:28s} {name:10s} {fwd:9.2f} {both:11.2f} {base_fwd / fwd:7.2f} {base_both / both:7.2f}"
            if memory:
                line += f" {peak_memory_mb(shape, name, device, threads):8.1f}"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per approach (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA section even when a GPU exists")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(args.memory_probe)
        return
    torch.set_num_threads(args.threads)
    report("cpu", args.iters, args.warmup, args.threads, not args.no_memory)
    if torch.cuda.is_available() and not args.no_cuda:
        report("cuda", args.iters, args.warmup, args.threads, not args.no_memory)


if __name__ == "__main__":
    main()
