"""Achieved memory bandwidth of the Triton neighbourhood weighted sum (``overlock.ops.triton_av``) on a GPU.

    python benchmarks/triton_av_bandwidth.py [--batch 8 --groups 8 --height 100 --width 160 --channels 32
                                              --kernel-size 13 --dtype float32 --json FILE]

Bandwidth counts the bytes each call must move at least (every input read once, every output written
once; the backward's two kernels both read grad_out) divided by the median time of a call. Without a
CUDA device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def _time_ms(fn, iters: int) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` timed calls, after warm-up (compilation included there)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--height", type=int, default=100)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--channels", type=int, default=32, help="channels per group")
    parser.add_argument("--kernel-size", type=int, default=13)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("triton_av_bandwidth needs a CUDA GPU; none is available here, nothing to measure.")
        return 0
    from overlock.ops import triton_av

    if not triton_av.triton_available(torch.empty(0, device="cuda")):
        print("triton cannot be imported (or runs in interpreter mode): nothing to measure.", file=sys.stderr)
        return 1

    dtype = getattr(torch, args.dtype)
    b, g, h, w, c, k = args.batch, args.groups, args.height, args.width, args.channels, args.kernel_size
    attn = torch.randn(b, g, h, w, k * k, device="cuda", dtype=torch.float32).softmax(-1).to(dtype)
    value = torch.randn(b, g, h, w, c, device="cuda", dtype=dtype)
    grad_out = torch.randn_like(value)

    size = dtype.itemsize
    attn_bytes, value_bytes = attn.numel() * size, value.numel() * size
    forward_bytes = attn_bytes + 2 * value_bytes  # read attn, value; write out
    backward_bytes = 2 * attn_bytes + 4 * value_bytes  # read grad_out twice, value, attn; write both grads

    forward_ms = _time_ms(lambda: triton_av.av_forward(attn, value, k), args.iters)
    backward_ms = _time_ms(lambda: triton_av.av_backward(grad_out, attn, value, k), args.iters)

    print(f"device: {torch.cuda.get_device_name()}")
    print(f"shape: B={b} G={g} {h}x{w} C={c} K={k} {args.dtype} (attn {attn_bytes / 2**20:.0f} MiB, "
          f"value {value_bytes / 2**20:.0f} MiB)")
    rows = {}
    for name, ms, nbytes in (("av_forward", forward_ms, forward_bytes), ("av_backward", backward_ms, backward_bytes)):
        print(f"{name:12s} {ms:8.3f} ms  {nbytes / ms / 1e6:8.1f} GB/s")
        rows[name] = {"ms": ms, "bytes": nbytes, "gb_per_s": nbytes / ms / 1e6}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": [b, g, h, w, c, k], "dtype": args.dtype,
                       **rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
