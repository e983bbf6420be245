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

The process harness (one process per model and mode, alternating rounds, medians) is ``process_cost.py``.
"""
from __future__ import annotations

import argparse

from process_cost import add_harness_arguments, measure, work_or_run_rounds

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

    seconds, peak_mb = measure(step, args.warmup, args.iters, device)
    return {"model": args.worker, "mode": args.mode, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_harness_arguments(parser, MODELS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--drop-path", type=float, default=0.2)
    work_or_run_rounds(__file__, parser.parse_args(), MODELS, ("size", "batch_size", "drop_path"), worker)


if __name__ == "__main__":
    main()
