"""The depthwise convolution op on CPUs against PyTorch's own convolution, at OverLoCK-XT's shapes (batch 8,
224 px, channels-last), forward alone and forward + backward: the large kernels (the op's weight gradient by
correlation) and some dilated branches (the op runs them as dense kernels). Medians of round-robin rounds in one
process.

    python benchmarks/depthwise_grad.py --threads 2 --iters 9
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from overlock.benchmark import time_round_robin
from overlock.ops.depthwise import depthwise_conv2d

# (channels, map size, kernel, dilation): the stage 1-3 large kernels and some dilated branches of XT
SHAPES = [(56, 56, 17, 1), (112, 28, 15, 1), (256, 14, 13, 1), (56, 56, 3, 7), (112, 28, 7, 2), (256, 14, 3, 5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads; ms, medians of {args.iters} rounds")
    print(f"{'channels, map, kernel, dilation':<34} {'pass':<17} {'PyTorch':>8} {'op':>8} {'speed-up':>9}")
    for channels, size, kernel, dilation in SHAPES:
        x = torch.randn(args.batch_size, channels, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, 1, kernel, kernel)
        pad = dilation * (kernel - 1) // 2
        for backward in (False, True):
            x.requires_grad_(backward)
            w.requires_grad_(backward)

            def plain():
                y = F.conv2d(x, w, padding=pad, dilation=dilation, groups=channels)
                if backward:
                    y.sum().backward()

            def ours():
                y = depthwise_conv2d(x, w, None, pad, dilation)
                if backward:
                    y.sum().backward()

            times = time_round_robin([plain, ours], warmup=1, iters=args.iters)
            medians = [1000 * statistics.median(t) for t in times]
            name = "forward+backward" if backward else "forward"
            print(f"{f'{channels}, {size}x{size}, {kernel}x{kernel}, {dilation}':<34} {name:<17} {medians[0]:>8.1f} "
                  f"{medians[1]:>8.1f} {medians[0] / medians[1]:>8.2f}x")

if __name__ == "__main__":
    main()
