"""Segmentation training by iterations (the official UperNet recipe), on the classification trainer's parts.

From :mod:`overlock.train.engine` and its neighbours it takes what makes a run safe and repeatable: the run folder
rules, atomic checkpoints read back with clear errors, the seeding of every random step from (seed, pass, step)
and of every sample from (seed, pass, index) so that a run killed and resumed continues exactly, the
resumable shardable sampler, DDP under torchrun with BatchNorm synchronised across GPUs, AMP, the stop on a
non-finite loss, CSV and TensorBoard logs. What is its own is what the recipe prescribes: iterations instead of
epochs (the data is cycled in passes), a poly learning rate set before every step, mmsegmentation's losses, and an
mIoU evaluation every ``eval_every`` iterations.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.seeded import SeededDataset
from ..data.segmentation import SegmentationDataset, Skipped, TrainPipeline, collate_segmentation
from ..segmentation import SegInference, predict_probabilities
from .checkpoint import CheckpointError, load_training_checkpoint, save_atomic
from .distributed import DistInfo, all_reduce_sum, init_distributed, sync_batchnorm
from .engine import (
    AMP_DTYPES, NonFiniteLossError, _changed_classes_message, _CsvLog, _restore_rng, _rng_state, _seed_step,
    _tensorboard, finish_run_logs, optimizer_step, prepare_output, read_run_log, save_two_panel_curves,
)
from .sampler import EpochSampler
from .seg_config import SegTrainConfig, build_optimizer, build_segmenter, poly_lr
from .seg_loss import segmentation_losses
from .seg_metrics import IoUAccumulator

_logger = logging.getLogger(__name__)

# options that may change when a run is resumed; every other one comes from the checkpoint
RESUME_OVERRIDABLE = ("output", "workers", "save_every", "max_steps")
RUN_FILES = ("per_class.csv",)  # this trainer's files beside the classification trainer's
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


def _as_is(item: Any) -> Any:
    return item


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset: SegmentationDataset, settings: SegInference, info: DistInfo,
                          workers: int = 0, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and per-class IoU/accuracy over ``dataset`` (each process a share; summed), each image
    predicted at its own size as ``settings`` says; unusable samples counted in ``skipped``."""
    model.eval()
    sampler = EpochSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size, even=False)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, collate_fn=_as_is)
    accumulator = IoUAccumulator(dataset.num_classes, info.device)
    counts = torch.zeros(2, dtype=torch.float64, device=info.device)  # images, skipped
    for sample in loader:
        if isinstance(sample, Skipped):
            counts[1] += 1
            continue
        image, mask = sample
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs = predict_probabilities(model, image, settings, info.device)
        accumulator.update(probs.argmax(0), torch.as_tensor(mask, device=info.device))
        counts[0] += 1
    accumulator.all_reduce(info)
    counts = all_reduce_sum(counts, info)
    return {**accumulator.compute(dataset.classes), "images": int(counts[0].item()), "skipped": int(counts[1].item())}


def plot_seg_curves(out: Path) -> None:
    """Training loss per step and validation mIoU / mAcc per evaluation, from the run's CSV logs, as curves.png."""
    steps, evals = read_run_log(out, "steps.csv"), read_run_log(out, "metrics.csv")
    eval_steps = [int(r["step"]) for r in evals]

    def loss(ax) -> None:
        ax.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1, label="train (step)")
        ax.plot(eval_steps, [float(r["train_loss"]) for r in evals], "o-", label="train (mean since last evaluation)")
        ax.set(xlabel="iteration", ylabel="loss (decode + 0.4 aux)", title="loss")

    def metrics(ax) -> None:
        for key, style in (("mIoU", "o-"), ("mAcc", "s--"), ("aAcc", "^:")):
            ax.plot(eval_steps, [float(r[key]) for r in evals], style, label=key)
        ax.set(xlabel="iteration", ylabel="validation (%)", title="segmentation metrics")

    save_two_panel_curves(out, loss, metrics)


def train_segmentation(cfg: SegTrainConfig, resume: bool = False, overwrite: bool = False,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the segmentation training described by ``cfg``; returns the summary written to summary.json.

    When resuming, the run in ``cfg.output`` continues with its own configuration (from its last.pth), changed only
    by ``overrides``: any of ``RESUME_OVERRIDABLE`` (``max_steps=0`` lets a run stopped by ``max_steps`` finish).
    """
    info = init_distributed()
    out = Path(cfg.output)
    state = None
    if resume:
        unknown = set(overrides or {}) - set(RESUME_OVERRIDABLE)
        if unknown:
            raise ValueError(f"a resumed run keeps its settings; only {', '.join(RESUME_OVERRIDABLE)} may change, "
                             f"not {', '.join(sorted(unknown))}")
        state = load_training_checkpoint(out / "last.pth")
        try:
            saved = SegTrainConfig(**state["config"])
        except TypeError as exc:
            raise CheckpointError(f"{out / 'last.pth'} is not a segmentation run's checkpoint: {exc}") from exc
        cfg = saved.updated(output=cfg.output, **(overrides or {}))
    elif info.is_main:
        prepare_output(out, resume, overwrite)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    torch.manual_seed(cfg.seed)

    train_set, val_set = build_seg_datasets(cfg)
    classes = train_set.classes
    if state is not None and list(state.get("classes") or classes) != classes:
        raise CheckpointError(_changed_classes_message(list(state["classes"]), classes, cfg.data_dir))
    model = build_segmenter(cfg, len(classes))
    if cfg.sync_bn:
        model = sync_batchnorm(model, info)
    model.to(info.device)
    accum = cfg.accum_steps(info.world_size)

    seeded = SeededDataset(train_set, cfg.seed)
    sampler = EpochSampler(len(seeded), shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(seeded, cfg.batch_size, sampler=sampler, drop_last=True, num_workers=cfg.workers,
                        collate_fn=collate_segmentation)
    micro_per_pass = len(loader) // accum * accum
    if micro_per_pass == 0:
        raise ValueError(f"{len(train_set)} training images give no full step of {cfg.global_batch} images "
                         f"({cfg.batch_size} x {accum} x {info.world_size} processes): lower --global-batch")

    optimizer = build_optimizer(model, cfg)
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    train_model = DistributedDataParallel(model) if info.enabled else model
    settings = inference_settings(cfg)

    step, data_pass, micro, best_miou = 0, 0, 0, -1.0
    last_eval: dict[str, Any] = {}
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # since the last evaluation: loss, images, skipped
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{out / 'last.pth'} does not match this run's model or optimizer: {exc}") from exc
        step, data_pass, micro = state["step"], state["epoch"], state["micro_in_epoch"]
        best_miou, last_eval = state["best_miou"], state.get("last_eval", {})
        sums += torch.tensor(state["sums"], dtype=torch.float64, device=info.device) / info.world_size
        _restore_rng(state["rng"])
        _logger.info("resumed %s at iteration %d", out, step)

    metrics_log = _CsvLog(out / "metrics.csv", METRIC_FIELDS)
    per_class_log = _CsvLog(out / "per_class.csv", ["step", "class", "IoU", "Acc"])
    steps_log = _CsvLog(out / "steps.csv", ["step", "lr", "loss", "decode_acc"])
    if state is not None and info.is_main:  # drop rows logged after the checkpoint (the killed run's tail)
        for log in (metrics_log, per_class_log, steps_log):
            log.truncate("step", step)
    writer = _tensorboard(out, purge_step=step if state is not None else None) if info.is_main else None

    def snapshot() -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": {"policy": "poly", "step": step}, "epoch": data_pass, "micro_in_epoch": micro, "step": step,
            "best_miou": best_miou, "last_eval": last_eval, "sums": sums.tolist(), "config": asdict(cfg),
            "classes": classes, "rng": _rng_state(),
        }

    def run_evaluation() -> None:
        nonlocal last_eval, best_miou, sums
        totals, sums = all_reduce_sum(sums, info), torch.zeros_like(sums)
        last_eval = evaluate_segmentation(model, val_set, settings, info, cfg.workers, amp_dtype)
        improved = last_eval["mIoU"] > best_miou
        best_miou = max(best_miou, last_eval["mIoU"])
        if not info.is_main:
            return
        row = {"step": step, "data_pass": data_pass, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": totals[0].item() / max(totals[1].item(), 1), "aAcc": last_eval["aAcc"],
               "mIoU": last_eval["mIoU"], "mAcc": last_eval["mAcc"], "skipped_train": round(totals[2].item()),
               "skipped_val": last_eval["skipped"], "seconds": round(time.time() - start, 1)}
        metrics_log.write(row)
        for name, values in last_eval["per_class"].items():
            per_class_log.write({"step": step, "class": name, **values})
        _logger.info("iteration %d: mIoU %.2f mAcc %.2f aAcc %.2f", step, last_eval["mIoU"], last_eval["mAcc"],
                     last_eval["aAcc"])
        if writer:
            for key in ("train_loss", "aAcc", "mIoU", "mAcc"):
                writer.add_scalar(f"val/{key}" if key != "train_loss" else "train/mean_loss", row[key], step)
        if improved:
            save_atomic({"model": model.state_dict(), "step": step, "mIoU": best_miou, "classes": classes,
                         "config": asdict(cfg)}, out / "best.pth")

    start = time.time()
    bar = tqdm(total=cfg.iters, initial=step, desc="iterations", disable=not info.is_main, leave=False)
    stop = cfg.max_steps or cfg.iters
    while step < min(stop, cfg.iters):
        seeded.set_epoch(data_pass)
        sampler.set_epoch(data_pass, skip=micro * cfg.batch_size)
        train_model.train()
        for images, labels, skipped in loader:
            if micro >= micro_per_pass or step >= min(stop, cfg.iters):
                break
            _seed_step(cfg.seed, data_pass, micro)
            sums[2] += skipped
            if len(labels) == 0:
                raise ValueError(f"every sample of a training batch was skipped ({skipped}): check {cfg.data_dir}")
            images, labels = images.to(info.device), labels.to(info.device)
            boundary = (micro + 1) % accum == 0
            sync = nullcontext() if boundary or not info.enabled else train_model.no_sync()
            with sync:
                with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = segmentation_losses(train_model(images), labels, cfg.aux_weight)
                loss = losses["loss"]
                finite = all_reduce_sum(torch.isfinite(loss).float().to(info.device), info)
                if finite.item() < info.world_size:
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at iteration {step}: stopping. Lower the learning rate or "
                        f"use bf16 instead of fp16; resume from {out / 'last.pth'} after changing the run"
                    )
                scaler.scale(loss / accum).backward()
            sums[0] += loss.detach().double() * len(images)
            sums[1] += len(images)
            micro += 1
            if not boundary:
                continue
            lr = poly_lr(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer_step(model, optimizer, scaler, cfg.clip_grad)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if info.is_main and step % 10 == 0:
                steps_log.write({"step": step, "lr": lr, "loss": loss.item(),
                                 "decode_acc": losses["decode.acc_seg"].item()})
                if writer:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/lr", lr, step)
            evaluate_now = step % cfg.eval_every == 0 or step == cfg.iters
            if evaluate_now:
                run_evaluation()
                train_model.train()
            if info.is_main and (evaluate_now or (cfg.save_every and step % cfg.save_every == 0)
                                 or step == stop):
                save_atomic(snapshot(), out / "last.pth")
        if micro >= micro_per_pass:
            data_pass, micro = data_pass + 1, 0
    bar.close()

    summary = {
        "backbone": cfg.backbone, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "steps": step,
        "train_seconds": round(time.time() - start, 1), "final": last_eval, "best_miou": best_miou,
        "processes": info.world_size, "config": asdict(cfg),
    }
    if info.is_main:
        finish_run_logs(out, summary, writer, plot_seg_curves)
    return summary
