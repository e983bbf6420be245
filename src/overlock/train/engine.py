"""The training loop: timm's data, optimizer, scheduler, EMA and losses; PyTorch DDP for several processes.

Everything random is a function of (seed, epoch, step) or (seed, epoch, sample index), so a run that is
killed and resumed from its last checkpoint continues exactly as if it had not been interrupted.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import overlock  # noqa: F401  (registers the models)

from ..data import FashionMNIST, FashionMNISTTransform, ImageFolderDataset, collate_skipping_corrupt
from ..data.augment import keep_zero_bit_posterize
from ..data.seeded import SeededDataset, mix_seed
from ..inference import eval_transform
from .checkpoint import CheckpointError, load_training_checkpoint, save_atomic, save_run_weights
from .config import TrainConfig
from .distributed import all_reduce_sum, init_distributed, sync_batchnorm
from .evaluate import evaluate
from .loss import overlock_loss
from .models import build_model
from .progress import Progress
from .sampler import EpochSampler

_logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of going on with broken weights."""


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


def prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a run folder that has results unless resuming it or told to overwrite."""
    if resume:
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("last.pth", "best.pth", "ema.pth", "best.safetensors", "ema.safetensors", "metrics.csv", "steps.csv",
                 "summary.json", "curves.png"):
        (out / name).unlink(missing_ok=True)


def _seed_step(seed: int, epoch: int, step: int) -> None:
    """Seed every RNG the step uses (dropout, drop path, Mixup) from (seed, epoch, step)."""
    value = mix_seed(seed, epoch, step)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


class _CsvLog:
    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])

    def truncate(self, key: str, last: int) -> None:
        """Keep only the rows whose ``key`` is at most ``last``."""
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r[key]) <= last]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def _tensorboard(out: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV logs remain
        _logger.warning("tensorboard is not installed; writing CSV logs only")
        return None
    return SummaryWriter(str(out / "tb"), purge_step=purge_step)


def _changed_classes_message(saved: list[str], found: list[str], data_dir: str | None) -> str:
    changes = []
    if gone := [c for c in saved if c not in found]:
        changes.append(f"missing now: {', '.join(map(repr, gone))}")
    if new := [c for c in found if c not in saved]:
        changes.append(f"new: {', '.join(map(repr, new))}")
    return (f"the classes of {data_dir} changed since the run started ({'; '.join(changes) or 'another order'}): "
            f"restore the class folders to resume, or start a new run")


def _rng_state() -> dict[str, Any]:
    """Every RNG's state, in types a weights-only ``torch.load`` reads (numpy's key array as a tensor)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def _restore_rng(saved: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`_rng_state` (or of a checkpoint that kept numpy's state as numpy gives it)."""
    numpy_state = saved["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["state"]["key"].numpy().astype(np.uint32)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key}}
    torch.set_rng_state(saved["torch"])
    np.random.set_state(numpy_state)
    random.setstate(saved["python"])


# options that may change when a run is resumed; every other one comes from the checkpoint
RESUME_OVERRIDABLE = ("output", "workers", "save_every", "max_steps")


def train(
    cfg: TrainConfig, resume: bool = False, overwrite: bool = False, overrides: Iterable[str] = RESUME_OVERRIDABLE
) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the summary written to summary.json.

    When resuming, the run's own configuration is taken from ``cfg.output``/last.pth; of ``cfg`` only ``output``
    and the ``overrides`` fields apply (those of ``RESUME_OVERRIDABLE``; the command line passes the ones given).
    """
    info = init_distributed()
    out = Path(cfg.output)
    state = None
    if resume:
        state = load_training_checkpoint(out / "last.pth")
        try:
            saved = TrainConfig(**state["config"])
        except TypeError as exc:
            raise CheckpointError(f"{out / 'last.pth'} holds a configuration this version cannot read: {exc}") from exc
        kept = {"output", *overrides} & set(RESUME_OVERRIDABLE)
        cfg = saved.updated(**{k: getattr(cfg, k) for k in kept})
    elif info.is_main:
        prepare_output(out, resume, overwrite)
    torch.manual_seed(cfg.seed)

    train_set, val_set, classes, in_chans = build_datasets(cfg)
    if state is not None and state.get("classes") is not None and list(state["classes"]) != classes:
        raise CheckpointError(_changed_classes_message(list(state["classes"]), classes, cfg.data_dir))
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

    epoch, step, micro_in_epoch, best_top1 = 0, 0, 0, -1.0
    last_eval: dict[str, float] = {}
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # this epoch: loss sum, images, skipped
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{out / 'last.pth'} does not match this run's model or optimizer: {exc}") from exc
        epoch, step, micro_in_epoch = state["epoch"], state["step"], state["micro_in_epoch"]
        best_top1, last_eval = state["best_top1"], state.get("last_eval", {})
        # rank 0's sums of the interrupted epoch, shared out so that the all-reduced mean keeps its value
        saved_sums = state.get("epoch_sums", [0.0] * 3)
        sums += torch.tensor(saved_sums, dtype=torch.float64, device=info.device) / info.world_size
        _restore_rng(state["rng"])
        _logger.info("resumed %s at epoch %d, step %d", out, epoch, step)

    metrics_log = _CsvLog(out / "metrics.csv", ["epoch", "step", "lr", "train_loss", "val_loss", "val_top1",
                                                "val_top5", "ema_top1", "skipped_images", "seconds"])
    steps_log = _CsvLog(out / "steps.csv", ["step", "epoch", "lr", "loss"])
    if state is not None and info.is_main:  # drop rows logged after the checkpoint (the killed run's tail)
        metrics_log.truncate("step", step)
        steps_log.truncate("step", step)
    writer = _tensorboard(out, purge_step=step if state is not None else None) if info.is_main else None

    def snapshot() -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "epoch": epoch, "step": step, "micro_in_epoch": micro_in_epoch, "best_top1": best_top1,
            "last_eval": last_eval, "epoch_sums": sums.tolist(), "config": asdict(cfg), "classes": classes,
            "rng": _rng_state(),
        }

    start = time.time()
    while epoch < cfg.epochs and not (cfg.max_steps and step >= cfg.max_steps):
        seeded.set_epoch(epoch)
        sampler.set_epoch(epoch, skip=micro_in_epoch * cfg.batch_size)
        train_model.train()
        if cfg.bn_eval:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        bar = Progress(micro_per_epoch, micro_in_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=info.is_main)
        for images, targets, skipped in train_loader:
            if micro_in_epoch >= micro_per_epoch or (cfg.max_steps and step >= cfg.max_steps):
                break
            _seed_step(cfg.seed, epoch, micro_in_epoch)
            sums[2] += skipped
            if len(targets) == 0:
                raise ValueError(f"every image of a training batch was unreadable ({skipped} files): "
                                 f"check {cfg.data_dir}")
            images, targets = images.to(info.device, memory_format=memory_format), targets.to(info.device)
            if mixup is not None:  # Mixup pairs images: an odd batch (corrupt files skipped) loses one
                even = len(images) // 2 * 2
                images, targets = mixup(images[:even], targets[:even])
            boundary = (micro_in_epoch + 1) % cfg.accum_steps == 0
            sync = nullcontext() if boundary or not info.enabled else train_model.no_sync()
            with sync:
                with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, _ = overlock_loss(train_model(images), targets, criterion, cfg.aux_weight)
                finite = all_reduce_sum(torch.isfinite(loss).float().to(info.device), info)
                if finite.item() < info.world_size:
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step}: stopping. Lower the "
                        f"learning rate, keep gradient clipping on, or use bf16 instead of fp16; resume from "
                        f"{out / 'last.pth'} after changing the run"
                    )
                scaler.scale(loss / cfg.accum_steps).backward()
            sums[0] += loss.detach().double() * len(images)
            sums[1] += len(images)
            micro_in_epoch += 1
            bar.update(1)
            if not boundary:
                continue
            optimizer_step(model, optimizer, scaler, cfg.clip_grad)
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(model, step=step)
            current_lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{current_lr:.2e}")
            if info.is_main and step % 10 == 0:
                steps_log.write({"step": step, "epoch": epoch, "lr": current_lr, "loss": loss.item()})
                if writer:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/lr", current_lr, step)
            if cfg.save_every and step % cfg.save_every == 0 and info.is_main:
                save_atomic(snapshot(), out / "last.pth")
        bar.close()
        if micro_in_epoch < micro_per_epoch:  # stopped by max_steps inside the epoch
            if info.is_main:
                save_atomic(snapshot(), out / "last.pth")
            break

        totals, sums = all_reduce_sum(sums, info), torch.zeros_like(sums)
        last_eval = evaluate(model, val_loader, info, amp_dtype)
        ema_eval = evaluate(ema.module, val_loader, info, amp_dtype) if ema is not None else None
        epoch, micro_in_epoch = epoch + 1, 0
        improved = last_eval["top1"] > best_top1
        best_top1 = max(best_top1, last_eval["top1"])
        row = {
            "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": totals[0].item() / max(totals[1].item(), 1), "val_loss": last_eval["loss"],
            "val_top1": last_eval["top1"], "val_top5": last_eval["top5"],
            "ema_top1": ema_eval["top1"] if ema_eval else "", "skipped_images": round(totals[2].item()),
            "seconds": round(time.time() - start, 1),
        }
        if info.is_main:
            metrics_log.write(row)
            _logger.info("epoch %d: val top-1 %.2f%% top-5 %.2f%% loss %.4f", epoch, last_eval["top1"],
                         last_eval["top5"], last_eval["loss"])
            if writer:
                for key in ("train_loss", "val_loss", "val_top1", "val_top5"):
                    writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
            if improved:
                _save_weights(model, {"epoch": epoch, "top1": best_top1, "classes": classes, "config": asdict(cfg)},
                              out / "best")
            if ema is not None:
                _save_weights(ema.module, {"epoch": epoch, "top1": ema_eval["top1"], "classes": classes,
                                           "config": asdict(cfg)}, out / "ema")
            save_atomic(snapshot(), out / "last.pth")  # last: a kill before this repeats the epoch

    summary = {
        "model": cfg.model, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "epochs": epoch, "steps": step, "train_seconds": round(time.time() - start, 1),
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


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, clip_grad: Optional[float]) -> None:
    """One optimizer step from the accumulated (scaled) gradients: unscaled and clipped to ``clip_grad`` when
    set, stepped through the gradient scaler, then cleared."""
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def finish_run_logs(out: Path, summary: dict[str, Any], writer: Any, plot: Callable[[Path], None]) -> None:
    """The main process's end of a run: ``summary.json``, the TensorBoard writer closed, ``curves.png`` drawn."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if writer:
        writer.close()
    plot(out)


def read_run_log(out: Path, name: str) -> list[dict[str, str]]:
    """The rows of one of a run's CSV logs (none where it does not exist yet)."""
    path = out / name
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def save_two_panel_curves(out: Path, draw_loss: Callable[[Any], None], draw_metric: Callable[[Any], None]) -> None:
    """``out/curves.png``: a loss panel and a validation-metric panel, each drawn by its callback on its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for draw, ax in zip((draw_loss, draw_metric), axes):
        draw(ax)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def plot_curves(out: Path) -> None:
    """Training loss per step and validation top-1 per epoch, from the run's CSV logs, as curves.png."""
    steps, epochs = read_run_log(out, "steps.csv"), read_run_log(out, "metrics.csv")
    epoch_steps = [int(r["step"]) for r in epochs]

    def loss(ax) -> None:
        ax.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1, alpha=0.6,
                label="train (step)")
        ax.plot(epoch_steps, [float(r["train_loss"]) for r in epochs], "o-", label="train (epoch)")
        ax.plot(epoch_steps, [float(r["val_loss"]) for r in epochs], "s--", label="validation")
        ax.set(xlabel="step", ylabel="loss", title="loss")

    def accuracy(ax) -> None:
        ax.plot(epoch_steps, [float(r["val_top1"]) for r in epochs], "o-", label="top-1")
        ax.plot(epoch_steps, [float(r["val_top5"]) for r in epochs], "s--", label="top-5")
        ax.set(xlabel="step", ylabel="validation accuracy (%)", title="accuracy")

    save_two_panel_curves(out, loss, accuracy)
