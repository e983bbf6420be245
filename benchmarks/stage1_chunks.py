"""Time of the stem and stage 1 in CPU inference against the number of parts the batch is run in.

``OverLoCK._stage1_chunks`` splits the batch so that each part's stage-1 output stays within
``STAGE1_BYTES_PER_CHUNK``; this prints the time of the stem and stage 1 (deploy form, eval mode, no
gradients) run whole and in 2, 4 and 8 parts, timed round-robin in one process (medians), and the number of
parts the model chooses.

    python benchmarks/stage1_chunks.py overlock_xt --threads 2 --batch-size 8
"""
from __future__ import annotations

import statistics
import time

import torch
from model_args import deploy_model, model_parser

from overlock.models.overlock import compute_layout


def main() -> None:
    args = model_parser(__doc__.splitlines()[0], iters=15).parse_args()
    model, x = deploy_model(args)
    x = compute_layout(x)
    parts = [n for n in (1, 2, 4, 8) if n <= args.batch_size]
    times: dict[int, list[float]] = {n: [] for n in parts}
    with torch.inference_mode():
        chosen = model._stage1_chunks(x)
        for i in range(args.iters + 1):
            for n in parts:
                start = time.perf_counter()
                torch.cat([model._stem_and_stage1(part) for part in x.tensor_split(n)])
                if i:  # the first round warms up
                    times[n].append(time.perf_counter() - start)
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads: "
          f"stem + stage 1, ms (median of {args.iters}); the model runs it in {chosen} part(s)")
    whole = statistics.median(times[1])
    for n in parts:
        ms = statistics.median(times[n])
        print(f"  {n} part(s): {1000 * ms:7.1f} ms  {whole / ms:5.2f}x")


if __name__ == "__main__":
    main()
