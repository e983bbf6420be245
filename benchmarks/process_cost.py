"""The process harness of the dense-model cost scripts (seg_cost.py, det_cost.py): every (model, mode) runs in a
process of its own, so that its peak memory (CUDA allocator peak, or the peak resident set size on a CPU) is its
own; the processes of the models alternate for ``--repeats`` rounds, each reports the median of its ``--iters`` timed
steps after ``--warmup``, and the table gives medians over rounds with the speed against the official model."""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

SHARED_FLAGS = ("official_repo", "variant", "device", "threads", "iters", "warmup")


def add_harness_arguments(parser: argparse.ArgumentParser, models: Sequence[str]) -> None:
    """The options every cost script takes, and the hidden ones of its worker processes."""
    parser.add_argument("--official-repo", help="a clone of LMMMEng/OverLoCK (without it only ours is measured)")
    parser.add_argument("--variant", choices=("t", "s", "b"), default="t")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating model processes")
    parser.add_argument("--modes", nargs="+", choices=("train", "infer"), default=("train", "infer"))
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", choices=models, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("train", "infer"), help=argparse.SUPPRESS)


def measure(step: Callable[[], None], warmup: int, iters: int, device) -> tuple[float, float]:
    """Median seconds of ``iters`` calls of ``step`` after ``warmup`` calls, and the process's peak memory in MB."""
    import torch

    times = []
    for i in range(warmup + iters):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        return statistics.median(times), torch.cuda.max_memory_allocated(device) / 2**20
    return statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def work_or_run_rounds(script: str, args: argparse.Namespace, models: Sequence[str], flags: Sequence[str],
                       worker: Callable[[argparse.Namespace], dict]) -> None:
    """In a worker process (``--worker``), print ``worker(args)``'s measurement as JSON; otherwise run the rounds
    (``_run_rounds``), the converted model (``ours_optimized``) in inference only."""
    if args.worker:
        print(json.dumps(worker(args)))
        return
    _run_rounds(script, args, models, flags)


def _run_rounds(script: str, args: argparse.Namespace, models: Sequence[str], flags: Sequence[str]) -> None:
    """Run every (mode, model) in its own process of ``script``, alternating models for ``args.repeats`` rounds;
    print the table and write ``args.json``."""
    rows = []
    for mode in args.modes:
        names = [m for m in models if (m != "official" or args.official_repo)
                 and (m != "ours_optimized" or mode == "infer")]
        runs: dict[str, list[dict]] = {m: [] for m in names}
        for _ in range(args.repeats):
            for name in names:
                cmd = [sys.executable, script, "--worker", name, "--mode", mode]
                for flag in (*SHARED_FLAGS, *flags):
                    value = getattr(args, flag)
                    if value is True:
                        cmd.append("--" + flag.replace("_", "-"))
                    elif value is not None and value is not False:
                        cmd += ["--" + flag.replace("_", "-"), str(value)]
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode == 0:
                    runs[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
                else:  # e.g. killed for memory: the table says so instead of losing the other measurements
                    reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
                    runs[name].append({"failed": f"{reason} (exit status {result.returncode})"})
        for name, measured in runs.items():
            done = [r for r in measured if "failed" not in r]
            if done:
                rows.append({"model": name, "mode": mode,
                             "seconds": statistics.median(r["seconds"] for r in done),
                             "peak_mb": statistics.median(r["peak_mb"] for r in done)})
            else:
                rows.append({"model": name, "mode": mode, "failed": measured[-1]["failed"]})
    base = {r["mode"]: r for r in rows if r["model"] == "official" and "failed" not in r}
    print(f"{'mode':<6} {'model':<16} {'s/step':>8} {'peak MB':>9} {'speed vs official':>18}")
    for r in rows:
        if "failed" in r:
            print(f"{r['mode']:<6} {r['model']:<16} failed: {r['failed']}")
            continue
        ratio = base[r["mode"]]["seconds"] / r["seconds"] if r["mode"] in base else float("nan")
        r["speedup_vs_official"] = ratio
        print(f"{r['mode']:<6} {r['model']:<16} {r['seconds']:>8.2f} {r['peak_mb']:>9.0f} {ratio:>17.2f}x")
    setting = {k: getattr(args, k) for k in ("variant", "device", "threads", "iters", "warmup", "repeats", *flags)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": setting, "rows": rows}, f, indent=2)
