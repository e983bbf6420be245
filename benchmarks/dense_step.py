"""Time and peak memory of one forward and backward pass of a dense backbone at detection resolution.

    python benchmarks/dense_step.py overlock_t --height 800 --width 1333 --batch-size 2 --device cuda --json FILE

The detection backbone (``features_only``) in training mode; the loss is the sum of the pyramid levels' means.
Median of ``--iters`` steps after one warm-up step; peak memory from CUDA's allocator statistics (or the peak
resident set size of this process on a CPU).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import timm
import torch

import overlock  # noqa: F401 - registers the models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="overlock_t")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="autocast dtype")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = timm.create_model(args.model, features_only=True).to(device).train()
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> float:
        start = time.perf_counter()
        with autocast:
            loss = sum(level.float().mean() for level in model(x))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(step() for _ in range(args.iters))
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"model": args.model, "input": [args.batch_size, 3, args.height, args.width], "device": str(device),
           "dtype": args.dtype, "forward_backward_s": seconds, "peak_mem_mb": peak_mb}
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
