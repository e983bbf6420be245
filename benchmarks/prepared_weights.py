"""Whole-model CPU inference with and without prepared convolution weights (``overlock.layers.prepared``).

One model (deploy form, eval mode, no gradients) is run alternately with ``OVERLOCK_PACKED_WEIGHTS`` at
``off`` (every call folds its BatchNorm and oneDNN reorders the weight) and ``auto`` (weights kept folded and
packed), in one process; it prints the medians, and the median and range over rounds of the paired ratio
(time prepared / time as given), which a slow spell of the machine moves less than the medians, and how
many reorders oneDNN ran in one pass of each (counted in its verbose log).

    python benchmarks/prepared_weights.py overlock_xt --threads 2 --iters 25
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch
from model_args import deploy_model, model_parser

from overlock.layers.prepared import PACK_ENV_VAR


def reorders(model: torch.nn.Module, x: torch.Tensor) -> int:
    """oneDNN reorders (weights into its layout, and the odd strided input) in one pass of ``model``, counted in
    oneDNN's verbose log."""
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)  # oneDNN writes its log to the process's standard output
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                model(x)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return sum(1 for line in log if ",exec," in line and ",reorder," in line)


def main() -> None:
    args = model_parser(__doc__.splitlines()[0], iters=15).parse_args()
    model, x = deploy_model(args)
    settings = ("off", "auto")
    times: dict[str, list[float]] = {s: [] for s in settings}
    outputs = {}
    with torch.no_grad():
        for i in range(args.iters + 1):
            for setting in settings:
                os.environ[PACK_ENV_VAR] = setting
                start = time.perf_counter()
                outputs[setting] = model(x)
                if i:  # the first round warms up (and prepares the weights)
                    times[setting].append(time.perf_counter() - start)
        counts = {}
        for setting in settings:
            os.environ[PACK_ENV_VAR] = setting
            counts[setting] = reorders(model, x)
    difference = (outputs["off"] - outputs["auto"]).abs().max().item()
    ratios = [prepared / given for given, prepared in zip(times["off"], times["auto"])]
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads, "
          f"{args.iters} rounds; largest output difference {difference:.2e}")
    print(f"weights as given: {1000 * statistics.median(times['off']):.1f} ms, "
          f"prepared: {1000 * statistics.median(times['auto']):.1f} ms")
    print(f"prepared / as given, paired: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"oneDNN reorders in a pass: {counts['off']} as given, {counts['auto']} prepared")


if __name__ == "__main__":
    main()
