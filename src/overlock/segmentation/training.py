"""Segmentation training by iterations (the official UperNet recipe), on the shared training loop.

From :mod:`overlock.engine` it takes what makes a run safe and repeatable: the run folder rules, atomic
checkpoints read back with clear errors, the seeding of every random step from (seed, pass, step) and of every
sample from (seed, pass, index) so that a run killed and resumed continues exactly, the resumable shardable
sampler, DDP under torchrun with BatchNorm synchronised across GPUs, AMP, the stop on a non-finite loss, progress,
CSV and TensorBoard logs. What is its own is what the recipe prescribes: iterations instead of epochs (the data
is cycled in passes), a poly learning rate set before every step, mmsegmentation's losses, and an mIoU evaluation
every ``eval_every`` iterations.
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

from ..engine.checkpoint import save_atomic
from ..engine.distributed import sync_batchnorm
from ..engine.loop import LoopHooks, LoopPlan, LoopState, PreparedBatch, TrainingLoop, TrainingTotals
from ..engine.optimizer import AMP_DTYPES
from ..engine.run import start_run
from ..engine.run_logs import finish_run_logs, save_run_curves
from ..engine.sampler import training_loader
from ..engine.seeding import rng_state
from .config import SegTrainConfig, build_optimizer, build_segmenter, poly_lr
from .data import SegmentationDataset, TrainPipeline, collate_segmentation
from .evaluate import evaluate_segmentation
from .inference import SegInference
from .loss import segmentation_losses

_logger = logging.getLogger(__name__)

# options that may change when a run is resumed; every other one comes from the checkpoint
RUN_FILES = ("per_class.csv",)  # this trainer's files beside those every run writes
METRIC_FIELDS = ["step", "data_pass", "lr", "train_loss", "aAcc", "mIoU", "mAcc", "skipped_train", "skipped_val",
                 "seconds"]


def build_seg_datasets(cfg: SegTrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Training set with the official training pipeline, and the validation set (raw images and masks)."""
    if not cfg.data_dir:
        raise ValueError("--data-dir is required (ADE20K's ADEChallengeData2016, or a folder of images and masks)")
    pipeline = TrainPipeline(
        crop_size=(cfg.crop_size, cfg.crop_size), scale=tuple(cfg.train_scale), ratio_range=tuple(cfg.ratio_range),
        cat_max_ratio=cfg.cat_max_ratio, photometric=cfg.photometric,
    )
    train = SegmentationDataset(cfg.data_dir, "train", cfg.dataset, pipeline, reduce_zero_label=cfg.reduce_zero_label,
                                substitute_skipped=True)
    val = SegmentationDataset(cfg.data_dir, "val", cfg.dataset, classes=train.classes,
                              reduce_zero_label=cfg.reduce_zero_label)
    return train, val


def inference_settings(cfg: SegTrainConfig) -> SegInference:
    """The test settings of the recipe: whole images (or sliding windows of the crop size, stride 2/3 of it)."""
    crop = (cfg.crop_size, cfg.crop_size)
    stride = (cfg.crop_size * 2 // 3, cfg.crop_size * 2 // 3)
    return SegInference(mode=cfg.test_mode, crop_size=crop, stride=stride, scale=tuple(cfg.test_scale))


def plot_seg_curves(out: Path) -> None:
    """Training loss per step and validation mIoU / mAcc per evaluation, from the run's CSV logs, as curves.png."""
    save_run_curves(out, [("train_loss", "o-", "train (mean since last evaluation)")],
                    [("mIoU", "o-", "mIoU"), ("mAcc", "s--", "mAcc"), ("aAcc", "^:", "aAcc")],
                    "iteration", "loss (decode + 0.4 aux)", "validation (%)", "segmentation metrics")


def train_segmentation(cfg: SegTrainConfig, resume: bool = False, overwrite: bool = False,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the segmentation training described by ``cfg``; returns the summary written to summary.json.

    When resuming, the run in ``cfg.output`` continues with its own configuration (from its last.pth), changed only
    by ``overrides``: any of ``engine.checkpoint.RESUME_OVERRIDABLE`` (``max_steps=0`` lets a run stopped by
    ``max_steps`` finish).
    """
    run = start_run(cfg, SegTrainConfig, resume, overrides)
    info, out, cfg = run.info, run.out, run.cfg
    run.prepare_folder(overwrite, extra_files=RUN_FILES)
    torch.manual_seed(cfg.seed)

    train_set, val_set = build_seg_datasets(cfg)
    classes = train_set.classes
    run.check_classes(classes)
    model = build_segmenter(cfg, len(classes))
    if cfg.sync_bn:
        model = sync_batchnorm(model, info)
    model.to(info.device)
    accum = cfg.accum_steps(info.world_size)

    loader, micro_per_pass = training_loader(train_set, cfg.seed, cfg.batch_size, accum, cfg.workers, info,
                                             collate_segmentation)

    optimizer = build_optimizer(model, cfg)
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    train_model = DistributedDataParallel(model) if info.enabled else model
    settings = inference_settings(cfg)

    loop_state = run.restore(model=model, optimizer=optimizer, scaler=scaler)
    best_miou = run.state["best_miou"] if run.state is not None else -1.0
    last_eval: dict[str, Any] = run.state.get("last_eval", {}) if run.state is not None else {}
    logs, writer = run.open_logs(loop_state, metrics=METRIC_FIELDS, per_class=["step", "class", "IoU", "Acc"],
                                 steps=["step", "lr", "loss", "decode_acc"])
    metrics_log, per_class_log, steps_log = logs["metrics"], logs["per_class"], logs["steps"]
    start = time.time()

    def prepare_batch(batch: tuple[Tensor, Tensor, int]) -> PreparedBatch:
        images, labels, skipped = batch
        if len(labels) == 0:
            raise ValueError(f"every sample of a training batch was skipped ({skipped}): check {cfg.data_dir}")
        return PreparedBatch(images.to(info.device), labels.to(info.device), len(images), skipped)

    def compute_losses(net: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return segmentation_losses(net(images), labels, cfg.aux_weight)

    def set_poly_lr(at: LoopState) -> None:
        lr = poly_lr(cfg, at.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def log_step(at: LoopState, losses: dict[str, Tensor]) -> None:
        if info.is_main and at.step % 10 == 0:
            lr, loss = optimizer.param_groups[0]["lr"], losses["loss"].item()
            steps_log.write({"step": at.step, "lr": lr, "loss": loss, "decode_acc": losses["decode.acc_seg"].item()})
            if writer:
                writer.add_scalar("train/loss", loss, at.step)
                writer.add_scalar("train/lr", lr, at.step)

    def run_evaluation(at: LoopState, totals: TrainingTotals) -> None:
        nonlocal last_eval, best_miou
        last_eval = evaluate_segmentation(model, val_set, settings, info, cfg.workers, amp_dtype)
        improved = last_eval["mIoU"] > best_miou
        best_miou = max(best_miou, last_eval["mIoU"])
        if not info.is_main:
            return
        row = {"step": at.step, "data_pass": at.data_pass, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": totals.mean_loss, "aAcc": last_eval["aAcc"], "mIoU": last_eval["mIoU"],
               "mAcc": last_eval["mAcc"], "skipped_train": totals.skipped, "skipped_val": last_eval["skipped"],
               "seconds": round(time.time() - start, 1)}
        metrics_log.write(row)
        for name, values in last_eval["per_class"].items():
            per_class_log.write({"step": at.step, "class": name, **values})
        _logger.info("iteration %d: mIoU %.2f mAcc %.2f aAcc %.2f", at.step, last_eval["mIoU"], last_eval["mAcc"],
                     last_eval["aAcc"])
        if writer:
            for key in ("train_loss", "aAcc", "mIoU", "mAcc"):
                writer.add_scalar(f"val/{key}" if key != "train_loss" else "train/mean_loss", row[key], at.step)
        if improved:
            save_atomic({"model": model.state_dict(), "step": at.step, "mIoU": best_miou, "classes": classes,
                         "config": asdict(cfg)}, out / "best.pth")

    def snapshot(at: LoopState) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": {"policy": "poly", "step": at.step}, "epoch": at.data_pass, "micro_in_epoch": at.micro,
            "step": at.step, "best_miou": best_miou, "last_eval": last_eval, "sums": at.sums.tolist(),
            "config": asdict(cfg), "classes": classes, "rng": rng_state(),
        }

    plan = LoopPlan(
        micro_per_pass=micro_per_pass, total_steps=cfg.iters, accum_steps=accum, eval_every=cfg.eval_every,
        save_every=cfg.save_every, max_steps=cfg.max_steps, seed=cfg.seed, amp_dtype=amp_dtype,
        clip_grad=cfg.clip_grad,
    )
    hooks = LoopHooks(prepare_batch, compute_losses, run_evaluation, snapshot, before_step=set_poly_lr,
                      after_step=log_step)
    loop = TrainingLoop(model, train_model, optimizer, scaler, loader, info, out / "last.pth", plan, hooks)
    loop_state = loop.run(loop_state)

    summary = {
        "backbone": cfg.backbone, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "steps": loop_state.step, "train_seconds": round(time.time() - start, 1), "final": last_eval,
        "best_miou": best_miou, "processes": info.world_size, "config": asdict(cfg),
    }
    if info.is_main:
        finish_run_logs(out, summary, writer, plot_seg_curves)
    return summary
