"""Cost of OverLoCK Mask R-CNN at COCO resolution: time and peak memory of inference and of a training step, ours
against the same detector on the official implementation's no-NATTEN path.

    python benchmarks/det_cost.py --official-repo ~/OverLoCK --threads 2 --iters 2 --warmup 1 --json det_cost.json

Models (T by default; ``--variant``): the official detector is the official detection backbone
(``detection/models/overlock.py`` of your clone, loaded with stand-ins for mmdet/mmcv and its ``na2d_av`` computed by
the unfold approach of the official no-NATTEN fallback, see ``overlock.official``; it needs ``pip install einops``)
in place of ours inside our Mask R-CNN, whose FPN, RPN and RoI heads compute what mmdetection 2.28's do
(tests/test_maskrcnn_fixture.py); ours is ``create_maskrcnn``, plain, and for inference also with its backbone
converted by ``optimize_for_inference``. 80 classes, the official test configuration, drop path 0.2 (T's recipe).

- infer: batch ``--infer-batch`` (1) of one ``--height`` x ``--width`` (800 x 1333) image padded to a multiple of 32,
  eval mode, no gradients, ``detect`` with rescaling (boxes and pasted masks);
- train: batch ``--train-batch`` (2) of such images with ``--boxes`` random boxes and masks each, the mmdetection
  training losses (RPN, box and mask heads; Mask R-CNN's train_cfg), backward, AdamW step.

The process harness (one process per model and mode, alternating rounds, medians) is ``process_cost.py``.
"""
from __future__ import annotations

import argparse

from process_cost import add_harness_arguments, measure, work_or_run_rounds

MODELS = ("official", "ours", "ours_optimized")


def _build(which: str, variant: str, repo: str | None, drop_path: float, checkpointing: bool):
    """The detector; with ``checkpointing`` every backbone block is recomputed in the backward pass (ours through
    ``set_grad_checkpointing``, the official one through its ``use_checkpoint`` list)."""
    from overlock.detection import create_maskrcnn

    model = create_maskrcnn(variant, drop_path_rate=drop_path)
    if which == "official":
        from overlock.official import load_official_detection_backbone

        extra = dict(use_checkpoint=[10**9] * 4) if checkpointing else {}
        model.backbone = load_official_detection_backbone(repo, f"overlock_{variant}", "unfold",
                                                          drop_path_rate=drop_path, **extra)
    elif checkpointing:
        model.backbone.set_grad_checkpointing(True)
    return model


def _batch(args: argparse.Namespace, batch: int, device):
    """Random normalised images of the test pipeline's shape (padded to 32) and their metadata."""
    import torch

    pad_h, pad_w = -(-args.height // 32) * 32, -(-args.width // 32) * 32
    images = torch.zeros(batch, 3, pad_h, pad_w, device=device)
    images[:, :, :args.height, :args.width] = torch.randn(batch, 3, args.height, args.width, device=device)
    meta = dict(img_shape=(args.height, args.width, 3), ori_shape=(args.height, args.width, 3),
                pad_shape=(pad_h, pad_w, 3), scale_factor=(1.0, 1.0, 1.0, 1.0), flip=False)
    return images, [dict(meta) for _ in range(batch)]


def _targets(args: argparse.Namespace, images, generator):
    """Per image ``--boxes`` random boxes (8 to 400 pixels a side), labels and box-filling masks."""
    import torch

    boxes, labels, masks = [], [], []
    pad_h, pad_w = images.shape[-2:]
    for _ in range(images.shape[0]):
        wh = torch.rand(args.boxes, 2, generator=generator) * 392 + 8
        xy = torch.rand(args.boxes, 2, generator=generator) * (torch.tensor([args.width, args.height]) - wh)
        box = torch.cat([xy, xy + wh], dim=1)
        mask = torch.zeros(args.boxes, pad_h, pad_w, dtype=torch.bool)
        for m, (x1, y1, x2, y2) in zip(mask, box.round().int().tolist()):
            m[y1:y2, x1:x2] = True
        boxes.append(box.to(images.device))
        labels.append(torch.randint(0, 80, (args.boxes,), generator=generator).to(images.device))
        masks.append(mask.to(images.device))
    return boxes, labels, masks


def worker(args: argparse.Namespace) -> dict:
    """Time one model in one mode in this process; returns the measurement."""
    import torch

    from overlock import optimize_for_inference
    from overlock.detection.losses import MASK_RCNN_TRAIN, DetectorWithLosses

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = _build(args.worker, args.variant, args.official_repo, args.drop_path,
                   args.grad_checkpointing and args.mode == "train").to(device)
    if args.mode == "train":
        images, metas = _batch(args, args.train_batch, device)
        boxes, labels, masks = _targets(args, images, torch.Generator().manual_seed(0))
        trainer = DetectorWithLosses(model, MASK_RCNN_TRAIN).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)

        def step() -> None:
            loss = trainer(images, boxes, labels, masks, metas)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        images, metas = _batch(args, args.infer_batch, device)
        model.eval()
        if args.worker == "ours_optimized":
            model.backbone = optimize_for_inference(model.backbone)

        def step() -> None:
            with torch.no_grad():
                model.detect(images, metas)

    seconds, peak_mb = measure(step, args.warmup, args.iters, device)
    return {"model": args.worker, "mode": args.mode, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_harness_arguments(parser, MODELS)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--infer-batch", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per training image")
    parser.add_argument("--drop-path", type=float, default=0.2)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="train: recompute every backbone block in the backward pass (both models), which a "
                             "batch of two 800x1333 images needs to fit in 24 GB of CPU memory")
    work_or_run_rounds(__file__, parser.parse_args(), MODELS,
                       ("height", "width", "infer_batch", "train_batch", "boxes", "drop_path", "grad_checkpointing"),
                       worker)


if __name__ == "__main__":
    main()
