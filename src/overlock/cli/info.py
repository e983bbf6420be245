"""``overlock info``: parameters, MACs and configuration of models, beside the paper's figures."""
from __future__ import annotations

import argparse
import json

import timm

import overlock  # noqa: F401  (registers the models)
from overlock.analysis import PAPER_FIGURES, count_macs, count_params
from overlock.models import builds_overlock, resolve_model_name, row_for_model

from .args import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", default=list(PAPER_FIGURES),
                        help="model names or ablation rows such as table6/dds_model (default: XT, T, S, B)")
    parser.add_argument("--model", dest="model_options", action="append", default=[],
                        help="a model name or ablation row (may be repeated; adds to the positional names)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="square input size for the MAC count")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe(name: str, img_size: int) -> dict:
    """Deploy-form parameters (without the auxiliary head) and MACs of ``name`` and its paper figures."""
    base = name.removesuffix("_reparam")
    kwargs = {"with_aux_head": False} if builds_overlock(base) else {}
    model = timm.create_model(name, **kwargs)
    if hasattr(model, "reparameterize"):
        model.reparameterize()
    cfg = model.pretrained_cfg
    row = {
        "model": name,
        "params_m": count_params(model) / 1e6,
        "gmacs": count_macs(model, (3, img_size, img_size)) / 1e9,
        "img_size": img_size,
        "crop_pct": cfg.get("crop_pct"),
        "interpolation": cfg.get("interpolation"),
        "url": cfg.get("url"),
    }
    paper = PAPER_FIGURES.get(base)
    if paper:
        row.update({f"paper_{k}": v for k, v in paper.items()})
    return row


def describe_named(name: str, img_size: int) -> dict:
    """:func:`describe` of a model name or an ablation row (whose paper figures are its table's)."""
    ablation = row_for_model(name)
    row = describe(resolve_model_name(name), img_size)
    if ablation is not None:
        paper = dict(params_m=ablation.paper_params_m, gmacs=ablation.paper_gflops, top1=ablation.paper_top1)
        row.update({f"paper_{k}": v for k, v in paper.items() if v is not None}, model=name)
    return row


def run(args: argparse.Namespace) -> int:
    names = (args.models if args.models != list(PAPER_FIGURES) or not args.model_options else []) + args.model_options
    unknown = [m for m in names if resolve_model_name(m) not in timm.list_models()]
    if unknown:
        raise ValueError(f"unknown model(s): {', '.join(unknown)}; OverLoCK models: "
                         f"{', '.join(timm.list_models('overlock_[!a]*'))}, ablation rows: see docs/ablations.md")
    rows = [describe_named(m, args.img_size) for m in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<30} {'params (M)':>10} {'paper':>6} {'GMACs':>7} {'paper':>6} {'top-1':>6}  crop  interp")
    for r in rows:
        print(
            f"{r['model']:<30} {r['params_m']:>10.2f} {r.get('paper_params_m', float('nan')):>6.1f} "
            f"{r['gmacs']:>7.2f} {r.get('paper_gmacs', float('nan')):>6.1f} {r.get('paper_top1', float('nan')):>6.1f}"
            f"  {r['crop_pct']}  {r['interpolation']}"
        )
    print(f"params: deploy form without the auxiliary head; MACs at {args.img_size}px by torch FlopCounterMode / 2")
    return 0
