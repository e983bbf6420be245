"""Forward time of PyTorch's CPU depthwise convolution against kernel size, on channels-last float32 maps.

The inference conversion's ``pad_kernels`` pass (13x13 kernels run as 15x15 with a zero border where oneDNN
runs AVX-512 code, ``overlock.ops.depthwise.padded_for_speed``) comes from this table: on oneDNN's AVX-512
depthwise kernel 13x13 is slower than 15x15 and 17x17, and 11x11 is not clearly faster when padded, so it is left
alone.
Each row is one map of the OverLoCK stages (batch 8 at 224 px, and a 800x1280 detection image at stride 16);
the last two columns time 11x11 and 13x13 padded to 15x15 (the rule pads 13x13 only) and their speed-up.
Sizes are timed round-robin in one process; medians.

    python benchmarks/depthwise_kernel_sizes.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from overlock.benchmark import time_round_robin
from overlock.ops.depthwise import PADDED_KERNEL_SIZE

SHAPES = [(8, 64, 56, 56), (8, 128, 28, 28), (8, 256, 14, 14), (1, 384, 14, 14), (2, 256, 50, 80)]
SIZES = [7, 9, 11, 13, 15, 17, 19]


def conv_step(x: torch.Tensor, kernel: int, padded: bool) -> Callable[[], object]:
    """A depthwise 'same' conv of ``x`` with a ``kernel`` x ``kernel`` weight, zero-padded to ``PADDED_KERNEL_SIZE``
    when ``padded``."""
    weight, padding = torch.randn(x.shape[1], 1, kernel, kernel), kernel // 2
    if padded:
        border = (PADDED_KERNEL_SIZE - kernel) // 2
        weight, padding = F.pad(weight, [border] * 4), padding + border
    return lambda: F.conv2d(x, weight, None, padding=padding, groups=x.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--iters", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          "ms per forward (median), channels-last float32")
    header = "".join(f"{k:>8}" for k in SIZES) + f"{'11 as 15':>9}{'13 as 15':>9}  speed-up 11 / 13"
    print(f"{'(B, C, H, W)':<20}{header}")
    for shape in SHAPES:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        steps = {str(k): conv_step(x, k, padded=False) for k in SIZES}
        steps |= {f"{k} as 15": conv_step(x, k, padded=True) for k in (11, 13)}
        times = time_round_robin(list(steps.values()), warmup=1, iters=args.iters)
        ms = {name: 1000 * statistics.median(t) for name, t in zip(steps, times)}
        cells = "".join(f"{ms[str(k)]:8.2f}" for k in SIZES) + f"{ms['11 as 15']:9.2f}{ms['13 as 15']:9.2f}"
        print(f"{str(shape):<20}{cells}  {ms['11'] / ms['11 as 15']:.2f}x / {ms['13'] / ms['13 as 15']:.2f}x")


if __name__ == "__main__":
    main()
