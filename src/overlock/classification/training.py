"""The classification trainer on the shared engine: timm's data, optimizer, scheduler, EMA and losses; PyTorch
DDP for several processes.

Everything random is a function of (seed, epoch, step) or (seed, epoch, sample index), so a run that is
killed and resumed from its last checkpoint continues exactly as if it had not been interrupted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import overlock  # noqa: F401  (registers the models)

from ..data import FashionMNIST, FashionMNISTTransform, ImageFolderDataset, collate_skipping_corrupt
from ..data.augment import keep_zero_bit_posterize
from ..data.seeded import SeededDataset
from ..engine.checkpoint import save_atomic, save_run_weights
from ..engine.distributed import sync_batchnorm
from ..engine.loop import LoopHooks, LoopPlan, LoopState, PreparedBatch, TrainingLoop, TrainingTotals
from ..engine.optimizer import AMP_DTYPES
from ..engine.run import start_run
from ..engine.run_logs import finish_run_logs, save_run_curves
from ..engine.sampler import EpochSampler
from ..engine.seeding import rng_state
from .config import TrainConfig
from .evaluate import evaluate
from .inference import eval_transform
from .loss import overlock_loss
from .models import build_model

_logger = logging.getLogger(__name__)


def folder_transforms(cfg: TrainConfig, model: nn.Module | None = None) -> tuple[Callable, Callable]:
    """Training (RandAugment, random erasing, random-resized crop) and evaluation transforms for RGB image
    folders; evaluation follows the model's crop_pct, interpolation, mean and std, as ``overlock validate`` does.

    RandAugment's posterize ops get back the meaning they had when the paper trained (0 bits: a black image),
    which Pillow 13 turned into an error (see :mod:`overlock.data.augment`).
    """
    data_cfg = resolve_data_config({"input_size": (3, cfg.img_size, cfg.img_size)}, model=model)
    train_tf = create_transform(
        (3, cfg.img_size, cfg.img_size),
        is_training=True,
        auto_augment=cfg.auto_augment,
        re_prob=cfg.reprob,
        interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"],
        std=data_cfg["std"],
    )
    keep_zero_bit_posterize(train_tf)
    return train_tf, eval_transform(model, cfg.img_size)


def build_datasets(cfg: TrainConfig, model: nn.Module | None = None) -> tuple[Dataset, Dataset, list[str], int]:
    """Train and validation datasets, class names, and input channels.

    On image folders the classes are those of ``train/``'s folders; ``val/``'s folders are matched to them by
    name (a missing one is not scored; one that matches no class stops the run, or is skipped with a warning
    under ``cfg.skip_unknown_classes``).
    """
    if cfg.dataset == "fashion_mnist":
        train = FashionMNIST("train", cfg.data_dir, FashionMNISTTransform(cfg.img_size, train=True))
        val = FashionMNIST("test", cfg.data_dir, FashionMNISTTransform(cfg.img_size, train=False))
        return train, val, list(train.classes), cfg.in_chans
    if cfg.dataset != "folder":
        raise ValueError(f"dataset must be 'folder' or 'fashion_mnist', got {cfg.dataset!r}")
    if not cfg.data_dir:
        raise ValueError("--data-dir is required for an image-folder dataset (ROOT/train/CLASS, ROOT/val/CLASS)")
    root = Path(cfg.data_dir)
    train_tf, val_tf = folder_transforms(cfg, model)
    train = ImageFolderDataset(root / "train", train_tf)
    val = ImageFolderDataset(root / "val", val_tf, classes=train.classes, skip_unknown=cfg.skip_unknown_classes)
    return train, val, list(train.classes), cfg.in_chans


def build_criterion(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, Mixup | None]:
    """The training criterion, and Mixup/CutMix when enabled (which then carries the label smoothing)."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(cfg.label_smoothing), None
    return nn.CrossEntropyLoss(), None


def learning_rate(cfg: TrainConfig, world_size: int) -> float:
    """``cfg.lr``, or the paper's rule: ``base_lr`` per 1024 images of the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.base_lr * cfg.batch_size * cfg.accum_steps * world_size / 1024


def build_optimizer(cfg: TrainConfig, model: nn.Module, world_size: int = 1) -> torch.optim.Optimizer:
    """timm's optimizer factory: ``cfg.opt`` at :func:`learning_rate`, weight decay off for norms and biases."""
    return create_optimizer_v2(model, opt=cfg.opt, lr=learning_rate(cfg, world_size), weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step schedule: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then cosine to ``min_lr``."""
    return CosineLRScheduler(
        optimizer,
        t_initial=steps_per_epoch * cfg.epochs,
        lr_min=cfg.min_lr,
        warmup_lr_init=cfg.warmup_lr,
        warmup_t=int(cfg.warmup_epochs * steps_per_epoch),
        t_in_epochs=False,
    )


METRIC_FIELDS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1",
                 "skipped_images", "seconds"]


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the summary written to summary.json.

    When resuming, the run in ``cfg.output`` continues with its own configuration (from its last.pth), changed only
    by ``overrides``: any of ``engine.checkpoint.RESUME_OVERRIDABLE`` (``max_steps=0`` lets a run stopped by
    ``max_steps`` finish).
    """
    run = start_run(cfg, TrainConfig, resume, overrides)
    info, out, cfg = run.info, run.out, run.cfg
    run.prepare_folder(overwrite)
    torch.manual_seed(cfg.seed)

    train_set, val_set, classes, in_chans = build_datasets(cfg)
    run.check_classes(classes)
    num_classes = cfg.num_classes or len(classes)
    if num_classes < len(classes):
        raise ValueError(f"--num-classes {num_classes} is fewer than the {len(classes)} classes of the data")
    model = build_model(cfg, num_classes, in_chans)
    if cfg.dataset == "folder":  # the eval transform follows the model's crop_pct and interpolation
        train_set.transform, val_set.transform = folder_transforms(cfg, model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.sync_bn:
        model = sync_batchnorm(model, info)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(info.device, memory_format=memory_format)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None

    seeded = SeededDataset(train_set, cfg.seed)
    sampler = EpochSampler(len(seeded), shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    loader_kwargs = dict(num_workers=cfg.workers, collate_fn=collate_skipping_corrupt, pin_memory=False)
    train_loader = DataLoader(seeded, cfg.batch_size, sampler=sampler, drop_last=True, **loader_kwargs)
    val_sampler = EpochSampler(len(val_set), shuffle=False, rank=info.rank, world_size=info.world_size, even=False)
    val_loader = DataLoader(val_set, cfg.batch_size * 2, sampler=val_sampler, **loader_kwargs)
    micro_per_epoch = len(train_loader) // cfg.accum_steps * cfg.accum_steps
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training images give no full step of {cfg.batch_size} x {cfg.accum_steps} "
            f"x {info.world_size} processes: lower --batch-size or --accum-steps"
        )

    criterion, mixup = build_criterion(cfg, num_classes)
    lr = learning_rate(cfg, info.world_size)
    optimizer = build_optimizer(cfg, model, info.world_size)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    train_model = DistributedDataParallel(model) if info.enabled else model

    loop_state = run.restore("epoch_sums", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                             ema=ema.module if ema is not None else None)
    best_top1 = run.state["best_top1"] if run.state is not None else -1.0
    last_eval: dict[str, float] = run.state.get("last_eval", {}) if run.state is not None else {}
    logs, writer = run.open_logs(loop_state, metrics=METRIC_FIELDS, steps=["step", "epoch", "lr", "loss"])
    metrics_log, steps_log = logs["metrics"], logs["steps"]
    start = time.time()

    def prepare_batch(batch: tuple[Tensor, Tensor, int]) -> PreparedBatch:
        images, targets, skipped = batch
        if len(targets) == 0:
            raise ValueError(f"every image of a training batch was unreadable ({skipped} files): check {cfg.data_dir}")
        images, targets = images.to(info.device, memory_format=memory_format), targets.to(info.device)
        if mixup is not None:  # Mixup pairs images: an odd batch (corrupt files skipped) loses one
            even = len(images) // 2 * 2
            images, targets = mixup(images[:even], targets[:even])
        return PreparedBatch(images, targets, len(images), skipped)

    def compute_losses(net: nn.Module, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"loss": overlock_loss(net(images), targets, criterion, cfg.aux_weight)[0]}

    def after_step(at: LoopState, losses: dict[str, Tensor]) -> None:
        scheduler.step_update(at.step)
        if ema is not None:
            ema.update(model, step=at.step)
        if info.is_main and at.step % 10 == 0:
            current_lr, loss = optimizer.param_groups[0]["lr"], losses["loss"].item()
            steps_log.write({"step": at.step, "epoch": at.data_pass, "lr": current_lr, "loss": loss})
            if writer:
                writer.add_scalar("train/loss", loss, at.step)
                writer.add_scalar("train/lr", current_lr, at.step)

    def evaluate_epoch(at: LoopState, totals: TrainingTotals) -> None:
        nonlocal last_eval, best_top1
        last_eval = evaluate(model, val_loader, info, amp_dtype)
        ema_eval = evaluate(ema.module, val_loader, info, amp_dtype) if ema is not None else None
        improved = last_eval["top1"] > best_top1
        best_top1 = max(best_top1, last_eval["top1"])
        if not info.is_main:
            return
        row = {
            "epoch": at.data_pass, "step": at.step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": totals.mean_loss, "val_loss": last_eval["loss"], "val_top1": last_eval["top1"],
            "val_top5": last_eval["top5"], "ema_top1": ema_eval["top1"] if ema_eval else "",
            "skipped_images": totals.skipped, "seconds": round(time.time() - start, 1),
        }
        metrics_log.write(row)
        _logger.info("epoch %d: val top-1 %.2f%% top-5 %.2f%% loss %.4f", at.data_pass, last_eval["top1"],
                     last_eval["top5"], last_eval["loss"])
        if writer:
            for key in ("train_loss", "val_loss", "val_top1", "val_top5"):
                writer.add_scalar(key.replace("_", "/", 1), row[key], at.data_pass)
        if improved:
            _save_weights(model, {"epoch": at.data_pass, "top1": best_top1, "classes": classes,
                                  "config": asdict(cfg)}, out / "best")
        if ema is not None:
            _save_weights(ema.module, {"epoch": at.data_pass, "top1": ema_eval["top1"], "classes": classes,
                                       "config": asdict(cfg)}, out / "ema")

    def snapshot(at: LoopState) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "epoch": at.data_pass, "step": at.step, "micro_in_epoch": at.micro, "best_top1": best_top1,
            "last_eval": last_eval, "epoch_sums": at.sums.tolist(), "config": asdict(cfg), "classes": classes,
            "rng": rng_state(),
        }

    plan = LoopPlan(
        micro_per_pass=micro_per_epoch, total_steps=steps_per_epoch * cfg.epochs, accum_steps=cfg.accum_steps,
        epochs=cfg.epochs, save_every=cfg.save_every, max_steps=cfg.max_steps, seed=cfg.seed, amp_dtype=amp_dtype,
        clip_grad=cfg.clip_grad, bn_eval=cfg.bn_eval,
    )
    hooks = LoopHooks(prepare_batch, compute_losses, evaluate_epoch, snapshot, after_step=after_step)
    loop = TrainingLoop(model, train_model, optimizer, scaler, train_loader, info, out / "last.pth", plan, hooks)
    loop_state = loop.run(loop_state)

    summary = {
        "model": cfg.model, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "epochs": loop_state.data_pass, "steps": loop_state.step, "train_seconds": round(time.time() - start, 1),
        "final": last_eval, "best_top1": best_top1, "processes": info.world_size, "lr": lr,
        "config": asdict(cfg),
    }
    if info.is_main:
        finish_run_logs(out, summary, writer, plot_curves)
    return summary


def _save_weights(model: nn.Module, info: dict[str, Any], stem: Path) -> None:
    """A model's weights with the run's information, as ``stem.pth`` and as ``stem.safetensors`` (no pickle)."""
    weights = model.state_dict()
    save_atomic({"model": weights, **info}, stem.with_suffix(".pth"))
    save_run_weights(weights, info, stem.with_suffix(".safetensors"))


def plot_curves(out: Path) -> None:
    """Training loss per step and validation top-1 per epoch, from the run's CSV logs, as curves.png."""
    save_run_curves(out, [("train_loss", "o-", "train (epoch)"), ("val_loss", "s--", "validation")],
                    [("val_top1", "o-", "top-1"), ("val_top5", "s--", "top-5")],
                    "step", "loss", "validation accuracy (%)", "accuracy")
