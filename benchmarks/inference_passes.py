"""What each pass of ``optimize_for_inference`` is worth on the whole model: the model converted with every pass,
and with each pass left out in turn (and the plain model, channels-last), timed round-robin in one process.

A pass's share is the median over rounds of (time without it / time with every pass) - 1: how much slower the
whole model runs without it.

    python benchmarks/inference_passes.py overlock_xt --threads 2 --iters 15
"""
from __future__ import annotations

import statistics

import torch

from model_args import deploy_model, model_parser
from overlock import optimize_for_inference
from overlock.benchmark import paired_ratio, time_round_robin
from overlock.models import PASSES


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], iters=15)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    model, x = deploy_model(args)
    variants = {"every pass": optimize_for_inference(model)}
    for name in PASSES[1:]:
        variants[f"without {name}"] = optimize_for_inference(model, [p for p in PASSES if p != name])
    variants["plain model (channels-last)"] = model.to(memory_format=torch.channels_last)
    inputs = {name: x.contiguous(memory_format=torch.channels_last) if name.startswith("plain") else x
              for name in variants}

    def step(name: str):
        def run() -> None:
            with torch.no_grad():
                variants[name](inputs[name])
        return run

    times = time_round_robin([step(name) for name in variants], args.warmup, args.iters)
    base = times[0]
    print(f"{args.model}, batch {args.batch_size} at {args.img_size} px, {torch.get_num_threads()} threads, "
          f"{args.iters} rounds")
    print(f"{'variant':<30} {'ms/batch':>9} {'time vs every pass':>19}")
    for name, t in zip(variants, times):
        print(f"{name:<30} {statistics.median(t) * 1000:>9.1f} {1 / paired_ratio(base, t):>18.3f}x")


if __name__ == "__main__":
    main()
