"""``overlock det``: instance detection and segmentation with Mask R-CNN / Cascade Mask R-CNN on OverLoCK.

``overlock det train``: train with a recipe preset (``maskrcnn_overlock_{t,s,b}_{1x,3x}``,
``cascade_overlock_{t,s,b}_3x``: the official COCO recipes; ``shapes``: a small Mask R-CNN on ``overlock data
shapes`` output, minutes on a CPU) on COCO-format data; every field can be overridden. Several processes:
``torchrun --nproc_per_node N -m overlock.cli.main det train ...``.

``overlock det validate``: COCO box and mask AP (AP, AP50, AP75, small/medium/large) of a checkpoint (an official
mmdet one, recognised from its keys, or a run's ``best.pth``) with the official test pipeline.

``overlock det predict IMAGE...``: a PNG per image with the masks, boxes and class names, and the detections of
all images as COCO-format JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from overlock.detection.presets import DET_PRESETS, DetTrainConfig, det_preset

from .args import add_config_options, add_run_folder_options, preset_with_options, resume_overrides

_HELP = {
    "backbone": "OverLoCK variant (timm name) of the detector",
    "model_kwargs": "extra backbone arguments as JSON",
    "cascade": "Cascade Mask R-CNN (Swin's box heads) instead of Mask R-CNN",
    "widths": "detector widths as JSON (fpn_channels, rpn_channels, fc_channels, conv_channels, mask_channels)",
    "pretrained": "backbone checkpoint to start from (ImageNet weights, e.g. overlock_t_in1k_224.pth)",
    "weights": "whole detector checkpoint to start from (official mmdet weights or a run's)",
    "data_dir": "COCO root (annotations/instances_train2017.json, train2017/, val2017/) or an 'overlock data "
                "shapes' folder",
    "pipeline": "training pipeline: 1x (single scale, flip) or 3x (multi-scale + random crop)",
    "global_batch": "images per optimizer step over all processes (gradients accumulated to reach it)",
    "batch_size": "images per process and forward pass",
    "amp": "mixed precision: none, bf16 or fp16",
    "eval_every": "evaluate (COCO AP) every N epochs",
    "save_every": "also checkpoint every N steps",
    "max_steps": "stop after N steps in all (resume later with --resume)",
}
_CHOICES = {"amp": ("none", "bf16", "fp16"), "pipeline": ("1x", "3x")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="det_command", required=True, metavar="{train,validate,predict}")
    _add_train(commands.add_parser("train", help="train a (Cascade) Mask R-CNN on COCO-format data"))
    _add_validate(commands.add_parser("validate", help="COCO box and mask AP of a checkpoint"))
    _add_predict(commands.add_parser("predict", help="detect objects in images: PNGs and COCO-format JSON"))


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(DET_PRESETS), help="recipe to start from (default: "
                        "maskrcnn_overlock_t_1x, or the backbone's 1x preset)")
    add_run_folder_options(parser)
    add_config_options(parser, DetTrainConfig, _HELP, _CHOICES)


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="official mmdet checkpoint (mask_rcnn_overlock_*.pth) "
                                                            "or a run's best.pth / last.pth")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def _add_validate(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint(parser)
    parser.add_argument("--data-dir", help="COCO root or an 'overlock data shapes' folder (its val split)")
    parser.add_argument("--ann", help="instances JSON (instead of --data-dir)")
    parser.add_argument("--images", help="image folder of --ann")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    _add_checkpoint(parser)
    parser.add_argument("--out", default="predictions", help="folder for IMAGE.png and detections.json")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw detections scoring at least this")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "validate": _validate, "predict": _predict}[args.det_command](args)


def config_from_args(args: argparse.Namespace) -> DetTrainConfig:
    """The preset chosen by the arguments, with every given option applied on top."""
    given = vars(args)
    name = args.preset or next((p for p, c in DET_PRESETS.items() if c.backbone == given.get("backbone")),
                               "maskrcnn_overlock_t_1x")
    return preset_with_options(det_preset(name), given, "backbone")


def _train(args: argparse.Namespace) -> int:
    from overlock.detection.train import train_detection

    cfg = config_from_args(args)
    overrides = resume_overrides(args, DetTrainConfig) if args.resume else None
    summary = train_detection(cfg, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    final = summary["final"]
    if final:
        print(_metrics_line(final) + f"  ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    print(f"run folder: {cfg.output} (metrics.csv, summary.json, curves.png, last/best checkpoints)")
    return 0


def _metrics_line(metrics: dict[str, float]) -> str:
    parts = []
    for kind in ("bbox", "segm"):
        if f"{kind}_mAP" in metrics:
            values = [metrics[f"{kind}_{k}"] for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")]
            parts.append(f"{kind}: AP {values[0]:.3f} AP50 {values[1]:.3f} AP75 {values[2]:.3f} "
                         f"APs {values[3]:.3f} APm {values[4]:.3f} APl {values[5]:.3f}")
    return "  ".join(parts)


def _validate(args: argparse.Namespace) -> int:
    from overlock.detection.data import CocoInstances, EvalPipeline
    from overlock.detection.evaluate import detect_to_coco, evaluate_coco_results
    from overlock.detection.inference import load_detector
    from overlock.detection.presets import coco_paths

    loaded = load_detector(args.checkpoint)
    ann, images = coco_paths(DetTrainConfig(data_dir=args.data_dir, val_ann=args.ann, val_images=args.images), "val")
    dataset = CocoInstances(ann, images, EvalPipeline(loaded.test_scale), with_masks=False)
    if dataset.num_classes != loaded.model.num_classes:
        raise ValueError(f"the data set has {dataset.num_classes} categories, the model {loaded.model.num_classes} "
                         "classes")
    model = loaded.model.to(args.device)
    boxes, masks, image_ids = detect_to_coco(model, dataset, dataset.category_ids, args.batch_size, args.device,
                                             args.workers)
    metrics = evaluate_coco_results(dataset.coco, boxes, masks, image_ids, dataset.category_ids)
    print(f"{_metrics_line(metrics)}\n({len(image_ids)} images; {loaded.description})")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from overlock.detection.evaluate import coco_results
    from overlock.detection.inference import draw_detections, load_detector, predict_image, write_png

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                     if len(missing) > 1 else ""))
    loaded = load_detector(args.checkpoint)
    loaded.model.to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, path in enumerate(args.images):
        image, detections = predict_image(loaded, path, args.device)
        write_png(out / f"{Path(path).stem}.png", draw_detections(image, detections, loaded.classes,
                                                                  args.score_threshold))
        boxes, masks = coco_results([detections], [index], loaded.category_ids)
        for box, mask in zip(boxes, masks or [None] * len(boxes)):
            entry = dict(box, file=str(path), category=loaded.classes[loaded.category_ids.index(box["category_id"])])
            if mask is not None:
                entry["segmentation"] = mask["segmentation"]
            results.append(entry)
        shown = int((detections["scores"] >= args.score_threshold).sum())
        print(f"{path}: {len(detections['scores'])} detections, {shown} at score >= {args.score_threshold}")
    (out / "detections.json").write_text(json.dumps(results))
    print(f"wrote {len(args.images)} PNGs and detections.json to {out} ({loaded.description})")
    return 0
