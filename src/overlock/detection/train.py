"""Detection training by epochs (the official COCO recipes), on the shared training loop.

From :mod:`overlock.engine` it takes what makes a run safe and repeatable: the run folder rules, atomic
checkpoints read back with clear errors, the seeding of every random step from (seed, pass, step) and of every
sample from (seed, pass, index) so that a run killed and resumed continues exactly (the RPN and RoI samplers draw
from the seeded step), the resumable shardable sampler, DDP under torchrun with BatchNorm synchronised across GPUs,
AMP, the stop on a non-finite loss, progress, CSV and TensorBoard logs. What is its own is what the recipe
prescribes: mmcv's step schedule by epoch with linear warm-up by iteration, mmdet's losses, and COCO box and mask
AP at the end of every ``eval_every``-th epoch (each process detects a share of the validation images, the main
one gathers their COCO results and evaluates).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from ..engine.checkpoint import save_atomic
from ..engine.distributed import sync_batchnorm
from ..engine.loop import LoopHooks, LoopPlan, LoopState, PreparedBatch, TrainingLoop, TrainingTotals
from ..engine.optimizer import AMP_DTYPES, substring_decay_groups
from ..engine.run import start_run
from ..engine.run_logs import finish_run_logs, save_run_curves
from ..engine.sampler import training_loader
from ..engine.seeding import rng_state
from .data import CocoInstances, DetectionSample, EvalPipeline, TrainPipeline1x, TrainPipeline3x, collate_detection
from .evaluate import detect_to_coco, evaluate_coco_results
from .losses import DetectorWithLosses
from .presets import DetTrainConfig, build_detector, coco_paths, step_lr

_logger = logging.getLogger(__name__)

# options that may change when a run is resumed; every other one comes from the checkpoint
METRIC_FIELDS = ["epoch", "step", "lr", "train_loss", "skipped_train", "bbox_mAP", "bbox_mAP_50", "bbox_mAP_75",
                 "segm_mAP", "segm_mAP_50", "segm_mAP_75", "seconds"]
STEP_FIELDS = ["step", "lr", "loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"]


def build_det_datasets(cfg: DetTrainConfig) -> tuple[CocoInstances, CocoInstances]:
    """Training set (images without usable annotations left out) with the recipe's pipeline, and the
    validation set with the test pipeline."""
    pipeline = TrainPipeline3x() if cfg.pipeline == "3x" else TrainPipeline1x(tuple(cfg.train_scale))
    train = CocoInstances(*coco_paths(cfg, "train"), pipeline=pipeline, filter_empty=True, substitute_unreadable=True)
    val = CocoInstances(*coco_paths(cfg, "val"), pipeline=EvalPipeline(tuple(cfg.test_scale)), with_masks=False)
    if val.category_ids != train.category_ids:
        raise ValueError(f"the validation categories {val.category_ids} are not the training ones "
                         f"{train.category_ids}")
    return train, val


def plot_det_curves(out: Path) -> None:
    """Training loss per step and validation box / mask AP per evaluation, from the run's CSV logs, as curves.png."""
    save_run_curves(out, [("train_loss", "o-", "train (mean since last evaluation)")],
                    [("bbox_mAP", "o-", "box AP"), ("bbox_mAP_50", "o--", "box AP50"), ("segm_mAP", "s-", "mask AP"),
                     ("segm_mAP_50", "s--", "mask AP50")],
                    "step", "loss (sum of the RPN and RoI head losses)", "COCO AP (validation)", "detection metrics")


def _to_device(sample: DetectionSample, device: torch.device) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    return sample.boxes.to(device), sample.labels.to(device), sample.masks.to(device), sample.meta


def train_detection(cfg: DetTrainConfig, resume: bool = False, overwrite: bool = False,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the detection training described by ``cfg``; returns the summary written to summary.json.

    When resuming, the run in ``cfg.output`` continues with its own configuration (from its last.pth), changed only
    by ``overrides``: any of ``engine.checkpoint.RESUME_OVERRIDABLE`` (``max_steps=0`` lets a run stopped by
    ``max_steps`` finish).
    """
    run = start_run(cfg, DetTrainConfig, resume, overrides)
    info, out, cfg = run.info, run.out, run.cfg
    train_set, val_set = build_det_datasets(cfg)  # bad data stops the run before its folder is touched
    run.prepare_folder(overwrite)
    torch.manual_seed(cfg.seed)

    classes, category_ids = train_set.classes, train_set.category_ids
    run.check_classes(classes)
    model = build_detector(cfg, len(classes))
    if cfg.sync_bn:
        model = sync_batchnorm(model, info)
    model.to(info.device)
    accum = cfg.accum_steps(info.world_size)

    loader, micro_per_pass = training_loader(train_set, cfg.seed, cfg.batch_size, accum, cfg.workers, info,
                                             collate_detection)

    optimizer = torch.optim.AdamW(substring_decay_groups(model, cfg.weight_decay, cfg.no_decay_keys), lr=cfg.lr,
                                  betas=(0.9, 0.999))
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    with_losses = DetectorWithLosses(model, cfg.train_cfg)
    train_model = DistributedDataParallel(with_losses) if info.enabled else with_losses

    loop_state = run.restore(model=model, optimizer=optimizer, scaler=scaler)
    best_ap = run.state["best_ap"] if run.state is not None else -1.0
    last_eval: dict[str, Any] = run.state.get("last_eval", {}) if run.state is not None else {}
    logs, writer = run.open_logs(loop_state, metrics=METRIC_FIELDS, steps=STEP_FIELDS)
    metrics_log, steps_log = logs["metrics"], logs["steps"]
    start = time.time()

    def prepare_batch(batch: tuple[Tensor, list[DetectionSample]]) -> PreparedBatch:
        images, samples = batch
        targets = list(zip(*(_to_device(s, info.device) for s in samples)))
        return PreparedBatch(images.to(info.device), targets, len(samples), sum(s.meta["skipped"] for s in samples))

    def compute_losses(net: nn.Module, images: Tensor, targets: list) -> dict[str, Tensor]:
        return net(images, *targets)

    def set_lr(at: LoopState) -> None:
        lr = step_lr(cfg, at.step, at.data_pass)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def log_step(at: LoopState, losses: dict[str, Tensor]) -> None:
        if info.is_main and at.step % 10 == 0:
            lr = optimizer.param_groups[0]["lr"]
            row = {"step": at.step, "lr": lr}
            for name in STEP_FIELDS[2:]:  # Cascade: the stages' losses summed per kind
                row[name] = sum(v.item() for k, v in losses.items() if k == name or k.startswith(name + "_s"))
            steps_log.write(row)
            if writer:
                writer.add_scalar("train/loss", row["loss"], at.step)
                writer.add_scalar("train/lr", lr, at.step)

    def run_evaluation(at: LoopState, totals: TrainingTotals) -> None:
        nonlocal last_eval, best_ap
        if at.data_pass % cfg.eval_every and at.data_pass != cfg.epochs:
            return
        shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
        results = detect_to_coco(model, shard, category_ids, 1, info.device, 0, amp_dtype)
        if info.enabled:  # the COCO results (RLE masks: small) of every process, to the main one
            gathered = [None] * info.world_size if info.is_main else None
            torch.distributed.gather_object(results, gathered, dst=0)
            if info.is_main:
                results = tuple([item for part in gathered for item in part[k]] for k in range(3))
        if not info.is_main:
            return
        boxes, masks, image_ids = results
        last_eval = evaluate_coco_results(val_set.coco, boxes, masks, sorted(image_ids), category_ids)
        improved = last_eval["bbox_mAP"] > best_ap
        best_ap = max(best_ap, last_eval["bbox_mAP"])
        row = {"epoch": at.data_pass, "step": at.step, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": totals.mean_loss, "skipped_train": totals.skipped,
               "seconds": round(time.time() - start, 1),
               **{k: last_eval.get(k, -1.0) for k in METRIC_FIELDS if "mAP" in k}}
        metrics_log.write(row)
        _logger.info("epoch %d: box AP %.3f (AP50 %.3f), mask AP %.3f (AP50 %.3f)", at.data_pass, row["bbox_mAP"],
                     row["bbox_mAP_50"], row["segm_mAP"], row["segm_mAP_50"])
        if writer:
            writer.add_scalar("train/mean_loss", totals.mean_loss, at.step)
            for key in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50"):
                writer.add_scalar(f"val/{key}", row[key], at.step)
        if improved:
            save_atomic({"model": model.state_dict(), "step": at.step, "bbox_mAP": best_ap, "classes": classes,
                         "category_ids": category_ids, "config": asdict(cfg)}, out / "best.pth")

    def snapshot(at: LoopState) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": {"policy": "step", "step": at.step, "epoch": at.data_pass}, "epoch": at.data_pass,
            "micro_in_epoch": at.micro, "step": at.step, "best_ap": best_ap, "last_eval": last_eval,
            "sums": at.sums.tolist(), "config": asdict(cfg), "classes": classes, "category_ids": category_ids,
            "rng": rng_state(),
        }

    plan = LoopPlan(
        micro_per_pass=micro_per_pass, total_steps=micro_per_pass // accum * cfg.epochs, accum_steps=accum,
        epochs=cfg.epochs, save_every=cfg.save_every, max_steps=cfg.max_steps, seed=cfg.seed, amp_dtype=amp_dtype,
        clip_grad=cfg.clip_grad,
    )
    hooks = LoopHooks(prepare_batch, compute_losses, run_evaluation, snapshot, before_step=set_lr,
                      after_step=log_step)
    loop = TrainingLoop(model, train_model, optimizer, scaler, loader, info, out / "last.pth", plan, hooks)
    loop_state = loop.run(loop_state)

    summary = {
        "backbone": cfg.backbone, "cascade": cfg.cascade, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "epochs": loop_state.data_pass, "steps": loop_state.step, "train_seconds": round(time.time() - start, 1),
        "final": last_eval, "best_bbox_mAP": best_ap, "processes": info.world_size, "config": asdict(cfg),
    }
    if info.is_main:
        finish_run_logs(out, summary, writer, plot_det_curves)
    return summary
