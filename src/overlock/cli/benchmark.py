"""``overlock benchmark``: our models and any timm models side by side: speed, memory, size, accuracy."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from overlock.benchmark import BenchConfig, benchmark, format_table, plot_speed_accuracy

from .args import non_negative_int, positive_int

DEFAULT_MODELS = ["overlock_xt", "convnext_nano", "overlock_t", "convnext_tiny"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="*", default=DEFAULT_MODELS,
        help="timm model names (OverLoCK models converted by optimize_for_inference for inference), plain:<name> "
             "for an OverLoCK model as it is, official:<name> with --official-repo (the first one is the ratio base)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--img-size", type=positive_int, default=224)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    parser.add_argument(
        "--memory-format", choices=["best", "nchw", "nhwc"], default="best",
        help="input and weight layout; 'best' runs each model in both and keeps its faster one",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--mode", choices=["infer", "train"], default="infer", help="inference or a training step")
    parser.add_argument("--iters", type=positive_int, default=6, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument("--official-repo", metavar="DIR", help="your clone of LMMMEng/OverLoCK, for official:<name>")
    parser.add_argument(
        "--official-av", choices=["natten", "unfold", "overlock"], default="unfold",
        help="na2d_av in the official model: real NATTEN, the official no-NATTEN fallback's unfold approach, or our op",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="write a speed-accuracy plot")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    cfg = BenchConfig(
        batch_size=args.batch_size, img_size=args.img_size, device=args.device, dtype=args.dtype,
        memory_format=args.memory_format, compile=args.compile, mode=args.mode,
        warmup=args.warmup, iters=args.iters, threads=args.threads,
        official_repo=args.official_repo, official_av=args.official_av,
    )
    results = benchmark(args.models, cfg)
    print(format_table(results))
    print(f"{cfg.mode}, batch {cfg.batch_size}, {cfg.img_size} px, {cfg.device}, {cfg.dtype}"
          f"{', compiled' if cfg.compile else ''}; layout: each model's faster of NCHW and NHWC"
          f"{'' if cfg.memory_format == 'best' else ' (fixed: ' + cfg.memory_format + ')'}; "
          f"medians of {cfg.iters} iterations; ratio = throughput / first model's, median of the per-round ratios")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    if args.plot:
        plot_speed_accuracy(results, args.plot, f"{cfg.device} {cfg.mode}, batch {cfg.batch_size}, {cfg.img_size}px")
        print(f"wrote {args.plot}")
    return 0
