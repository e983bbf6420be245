"""OverLoCK-XT against ConvNeXt-nano in one process, to compare versions of overlock on the same machine.

XT runs the way the imported overlock runs it fastest for inference: re-parameterised and converted by
``optimize_for_inference`` where the version has it, else the re-parameterised model in eval mode (versions
before the redesign chose their CPU fast path inside the model). Both models channels-last, batch 8 at 224 px,
timed round-robin; prints the medians and XT's speed relative to nano (median of the paired ratios), which
divides out the machine's drift. Run it in alternating processes, once per checkout:

    PYTHONPATH=/path/to/previous/src python benchmarks/xt_vs_nano.py
    python benchmarks/xt_vs_nano.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import overlock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels_last = torch.channels_last
    xt = timm.utils.reparameterize_model(timm.create_model("overlock_xt").eval())
    convert = getattr(overlock, "optimize_for_inference", None)
    xt = convert(xt) if convert is not None else xt.to(memory_format=channels_last)
    nano = timm.create_model("convnext_nano").eval().to(memory_format=channels_last)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=channels_last)

    # timed here, not with overlock.benchmark's round-robin timer, which older versions do not have
    times: dict[str, list[float]] = {"xt": [], "nano": []}
    with torch.no_grad():
        for round_ in range(args.warmup + args.iters):
            for name, model in (("xt", xt), ("nano", nano)):
                start = time.perf_counter()
                model(x)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    speed = statistics.median(n / t for n, t in zip(times["nano"], times["xt"]))
    print(f"overlock from {overlock.__file__}")
    print(f"XT {statistics.median(times['xt']) * 1000:.1f} ms, nano {statistics.median(times['nano']) * 1000:.1f} ms "
          f"a batch; XT's speed vs nano {speed:.3f}")


if __name__ == "__main__":
    main()
