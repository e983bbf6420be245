"""Where a model's inference time goes: wall-clock time of each top-level stage and block, medians.

The model as ``optimize_for_inference`` converts it. Forward hooks time every direct child of the model (for a
stage, each of its blocks) over several inference passes in one process; the table lists each part's median
time a pass and its share of the median whole pass (the parts' sum differs from the whole by the hooks and the
glue between them).

    python benchmarks/block_times.py overlock_xt --threads 2 --batch-size 8 --iters 7
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from model_args import deploy_model, model_parser

from overlock import optimize_for_inference
from overlock.models.overlock import FocusStage, RepConvStage


def timed_parts(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's direct children, with the stages split into their blocks."""
    parts = []
    for name, child in model.named_children():
        if isinstance(child, (RepConvStage, FocusStage)):
            parts.extend((f"{name}.{i}", block) for i, block in enumerate(child))
        else:
            parts.append((name, child))
    return parts


def block_times(model: torch.nn.Module, x: torch.Tensor, iters: int, warmup: int) -> tuple[float, dict]:
    """Median seconds of a whole pass of ``model`` on ``x`` and of each of its parts."""
    # seconds of each part in the current pass: a part called more than once a pass adds up its calls
    this_pass: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    for part, module in timed_parts(model):
        module.register_forward_pre_hook(lambda m, args, part=part: starts.__setitem__(part, time.perf_counter()))
        module.register_forward_hook(
            lambda m, args, out, part=part: this_pass.__setitem__(
                part, this_pass[part] + time.perf_counter() - starts[part]
            )
        )
    whole, times = [], defaultdict(list)
    with torch.inference_mode():
        for i in range(warmup + iters):
            this_pass.clear()
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                whole.append(time.perf_counter() - start)
                for part, seconds in this_pass.items():
                    times[part].append(seconds)
    return statistics.median(whole), {part: statistics.median(t) for part, t in times.items()}


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], iters=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    model, x = deploy_model(args)
    model = optimize_for_inference(model)
    whole, parts = block_times(model, x, args.iters, args.warmup)
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads: "
          f"{1000 * whole:.1f} ms a pass (median of {args.iters})")
    for part, seconds in parts.items():
        print(f"  {part:<18} {1000 * seconds:7.1f} ms  {100 * seconds / whole:5.1f} %")


if __name__ == "__main__":
    main()
