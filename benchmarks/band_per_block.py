"""Whole-model CPU inference against the block size of the fused ContMix kernel (``ops.cpu.BAND_PER_BLOCK``).

One model (deploy form, eval mode, no gradients) is run with each budget in turn, round-robin in one process;
it prints each budget's median time and the median and range over rounds of its time paired with the first
budget's in the same round.

    python benchmarks/band_per_block.py overlock_xt --threads 2 --iters 25 --budgets 524288 1048576 2097152
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import overlock  # noqa: F401 - registers the models
from overlock.ops import cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="overlock_xt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1 << 19, 1 << 20, 1 << 21],
                        help="band buffer sizes (floats); the first is the base of the ratios")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = timm.create_model(args.model).eval()
    timm.utils.reparameterize_model(model, inplace=True)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    times: dict[int, list[float]] = {b: [] for b in args.budgets}
    with torch.no_grad():
        for i in range(args.iters + 1):
            for budget in args.budgets:
                cpu.BAND_PER_BLOCK = budget
                start = time.perf_counter()
                model(x)
                if i:  # the first round warms up
                    times[budget].append(time.perf_counter() - start)
    base = times[args.budgets[0]]
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads, "
          f"{args.iters} rounds; time paired with budget {args.budgets[0]}'s")
    for budget in args.budgets:
        ratios = [t / b for b, t in zip(base, times[budget])]
        print(f"  {budget:>9} floats: {1000 * statistics.median(times[budget]):7.1f} ms, paired "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
