"""Cost of OverLoCK UperNet at segmentation resolution: time and peak memory of a training step and of inference,
ours against the official implementation's no-NATTEN path.

    python benchmarks/seg_cost.py --official-repo ~/OverLoCK --threads 2 --iters 3 --json seg_cost.json

Models (T by default; ``--variant``): the official UperNet is the official segmentation backbone
(``segmentation/models/overlock.py`` of your clone, loaded with stand-ins for mmseg/mmcv and its ``na2d_av``
computed by the unfold approach of the official no-NATTEN fallback, see ``overlock.official``) under our UPerHead and
FCNHead, which compute what mmsegmentation's do (tests/test_upernet_fixture.py); ours is ``create_upernet``, plain,
and for inference also with its backbone converted by ``optimize_for_inference``. Both at drop path 0.2 (T's
recipe), batch ``--batch-size`` at ``--size`` x ``--size``.

- train: forward of both heads, mmsegmentation's losses (random labels, 150 classes), backward, AdamW step;
- infer: eval mode, no gradients, logits resized to the input (whole-image inference).

Every (model, mode) runs in a process of its own, so that its peak memory (CUDA allocator peak, or the peak resident
set size on a CPU) is its own; the processes of the models alternate for ``--repeats`` rounds and each reports the
median of its ``--iters`` timed steps after ``--warmup``; the table gives medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("official", "ours", "ours_optimized")


def _build(which: str, variant: str, repo: str | None, drop_path: float):
    import torch

    from overlock.segmentation.upernet import FCNHead, UPerHead, create_upernet

    if which.startswith("ours"):
        return create_upernet(f"overlock_{variant}", num_classes=150, drop_path_rate=drop_path)
    from overlock.official import load_official_segmentation_backbone

    backbone = load_official_segmentation_backbone(repo, f"overlock_{variant}", "unfold", drop_path_rate=drop_path)
    with torch.device("meta"):
        channels = [info["num_chs"] for info in create_upernet(f"overlock_{variant}").backbone.feature_info]

    class OfficialUperNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.decode_head = UPerHead(channels, 150)
            self.auxiliary_head = FCNHead(channels[2], 150)

        def forward(self, x):
            levels = list(self.backbone(x))
            decode = self.decode_head(levels)
            return (decode, self.auxiliary_head(levels[2])) if self.training else decode

    return OfficialUperNet()


def worker(args: argparse.Namespace) -> dict:
    """Time one model in one mode in this process; returns the measurement."""
    import torch

    from overlock import optimize_for_inference
    from overlock.segmentation.inference import whole_logits
    from overlock.segmentation.loss import segmentation_losses

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = _build(args.worker, args.variant, args.official_repo, args.drop_path).to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    if args.mode == "train":
        labels = torch.randint(0, 150, (args.batch_size, args.size, args.size), device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
        model.train()

        def step() -> None:
            loss = segmentation_losses(model(x), labels)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        if args.worker == "ours_optimized":
            model.auxiliary_head = None
            model.backbone = optimize_for_inference(model.backbone)

        def step() -> None:
            with torch.no_grad():
                whole_logits(model, x)

    times = []
    for i in range(args.warmup + args.iters):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": args.worker, "mode": args.mode, "seconds": statistics.median(times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", help="a clone of LMMMEng/OverLoCK (without it only ours is measured)")
    parser.add_argument("--variant", choices=("t", "s", "b"), default="t")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--drop-path", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating model processes")
    parser.add_argument("--modes", nargs="+", choices=("train", "infer"), default=("train", "infer"))
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("train", "infer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    for mode in args.modes:
        models = [m for m in MODELS if (m != "official" or args.official_repo) and (m != "ours_optimized"
                                                                                     or mode == "infer")]
        runs: dict[str, list[dict]] = {m: [] for m in models}
        for _ in range(args.repeats):
            for name in models:
                cmd = [sys.executable, __file__, "--worker", name, "--mode", mode]
                for flag in ("official_repo", "variant", "size", "batch_size", "drop_path", "device", "threads",
                             "iters", "warmup"):
                    value = getattr(args, flag)
                    if value is not None:
                        cmd += ["--" + flag.replace("_", "-"), str(value)]
                result = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
        for name, measured in runs.items():
            rows.append({"model": name, "mode": mode,
                         "seconds": statistics.median(r["seconds"] for r in measured),
                         "peak_mb": statistics.median(r["peak_mb"] for r in measured)})
    base = {r["mode"]: r for r in rows if r["model"] == "official"}
    print(f"{'mode':<6} {'model':<16} {'s/step':>8} {'peak MB':>9} {'speed vs official':>18}")
    for r in rows:
        ratio = base[r["mode"]]["seconds"] / r["seconds"] if r["mode"] in base else float("nan")
        r["speedup_vs_official"] = ratio
        print(f"{r['mode']:<6} {r['model']:<16} {r['seconds']:>8.2f} {r['peak_mb']:>9.0f} {ratio:>17.2f}x")
    setting = {k: getattr(args, k) for k in ("variant", "size", "batch_size", "device", "threads", "iters", "warmup",
                                             "repeats")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": setting, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
