"""Whole-model CPU inference against the block size of the fused ContMix kernel (``ops.cpu.BAND_PER_BLOCK``).

One model (deploy form, eval mode, no gradients) is run with each budget in turn, round-robin in one process;
it prints each budget's median time and the median and range over rounds of its time paired with the first
budget's in the same round.

    python benchmarks/band_per_block.py overlock_xt --threads 2 --iters 25 --budgets 524288 1048576 2097152
"""
from __future__ import annotations

import statistics
import time

import torch
from model_args import deploy_model, model_parser

from overlock.ops import cpu


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], iters=15)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1 << 19, 1 << 20, 1 << 21],
                        help="band buffer sizes (floats); the first is the base of the ratios")
    args = parser.parse_args()
    model, x = deploy_model(args)
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
