"""Training configuration and the recipe presets (paper / official scripts, and the Fashion-MNIST job)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..engine.config import RunConfig


@dataclass
class TrainConfig(RunConfig):
    """Every knob of a run; presets fill in recipes, the command line overrides any field."""

    model: str = "overlock_xt"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # checkpoint file to start from (official or ours)
    dataset: str = "folder"  # 'folder' (ROOT/train/CLASS, ROOT/val/CLASS) or 'fashion_mnist'
    data_dir: str | None = None
    skip_unknown_classes: bool = False  # validation folders that match no training class: skip (else an error)
    num_classes: int | None = None  # default: from the dataset
    img_size: int = 224
    epochs: int = 300
    batch_size: int = 128  # per process
    accum_steps: int = 1
    lr: float | None = None  # default: base_lr * global batch / 1024
    base_lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    opt: str = "adamw"
    clip_grad: float | None = 5.0
    drop_path: float = 0.1
    aux_weight: float = 0.4
    ema_decay: float = 0.9999  # 0 disables the model EMA
    amp: str = "none"  # 'none', 'bf16' or 'fp16'
    channels_last: bool = False  # NHWC memory format (faster depthwise convolutions on CPUs and GPUs)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    reprob: float = 0.25
    workers: int = 4
    seed: int = 0
    grad_checkpointing: list[int] = field(default_factory=list)  # per-stage block counts, [] = off
    sync_bn: bool = False
    bn_eval: bool = False  # keep BatchNorm statistics frozen while training (fine-tuning, exact DDP tests)
    output: str = "runs/overlock"
    save_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    max_steps: int = 0  # stop after N optimizer steps in all (0: no limit)

    def __post_init__(self) -> None:
        for name, (valid, wanted) in _VALID.items():
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise ValueError(f"--{name.replace('_', '-')} must be {wanted}, got {value!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.grad_checkpointing and (len(self.grad_checkpointing) != 4 or min(self.grad_checkpointing) < 0):
            raise ValueError(f"--grad-checkpointing takes four block counts of 0 or more, got "
                             f"{self.grad_checkpointing}")

    @property
    def in_chans(self) -> int:
        """Input channels of the run's model: 1 for Fashion-MNIST's greyscale images, else 3."""
        return 1 if self.dataset == "fashion_mnist" else 3


AMP_CHOICES = ("none", "bf16", "fp16")


def _number(
    low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True
) -> Callable[[Any], bool]:
    """A test for a real number from ``low`` (included unless ``low_open``) to ``high`` (excluded unless not
    ``high_open``); NaN and infinity fail it."""
    def test(value: Any) -> bool:
        if not isinstance(value, (int, float)) or math.isnan(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return test


def _whole(low: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and value >= low


# option -> (test, what it must be); None always passes (the option is unset)
_VALID: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_whole(1), "a positive integer"),
    "img_size": (_whole(1), "a positive integer"),
    "epochs": (_whole(1), "a positive integer"),
    "batch_size": (_whole(1), "a positive integer"),
    "accum_steps": (_whole(1), "a positive integer"),
    "workers": (_whole(0), "an integer of 0 or more"),
    "save_every": (_whole(0), "an integer of 0 or more (0: at epoch ends only)"),
    "max_steps": (_whole(0), "an integer of 0 or more (0: no limit)"),
    "lr": (_number(0, low_open=True), "a positive number"),
    "base_lr": (_number(0, low_open=True), "a positive number"),
    "clip_grad": (_number(0, low_open=True), "a positive number (or none)"),
    "min_lr": (_number(0), "0 or more"),
    "warmup_lr": (_number(0), "0 or more"),
    "warmup_epochs": (_number(0), "0 or more"),
    "weight_decay": (_number(0), "0 or more"),
    "aux_weight": (_number(0), "0 or more"),
    "mixup": (_number(0), "0 or more"),
    "cutmix": (_number(0), "0 or more"),
    "drop_path": (_number(0, 1), "in [0, 1)"),
    "ema_decay": (_number(0, 1), "in [0, 1) (0 disables the EMA)"),
    "label_smoothing": (_number(0, 1), "in [0, 1)"),
    "reprob": (_number(0, 1, high_open=False), "in [0, 1]"),
}

_PAPER = dict(
    epochs=300, batch_size=128, base_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5, weight_decay=0.05,
    clip_grad=5.0, aux_weight=0.4, ema_decay=0.9999, amp="bf16", auto_augment="rand-m9-mstd0.5-inc1",
    mixup=0.8, cutmix=1.0, label_smoothing=0.1, reprob=0.25, img_size=224, dataset="folder",
)

PRESETS: dict[str, TrainConfig] = {
    # ImageNet-1k, the paper's DeiT-style recipe; drop path per variant
    "overlock_xt": TrainConfig(model="overlock_xt", drop_path=0.1, **_PAPER),
    "overlock_t": TrainConfig(model="overlock_t", drop_path=0.15, **_PAPER),
    "overlock_s": TrainConfig(model="overlock_s", drop_path=0.4, **_PAPER),
    "overlock_b": TrainConfig(model="overlock_b", drop_path=0.5, **_PAPER),
    # the paper's ablation schedule: the ImageNet-1k recipe for 120 epochs (rows of overlock.models.ablations)
    "ablation": TrainConfig(model="overlock_xt", drop_path=0.1, output="runs/ablation", **dict(_PAPER, epochs=120)),
    # Table G: OverLoCK-B fine-tuned at 384 x 384 from its 224 weights (--pretrained); the schedule is ConvNeXt's
    # 384 fine-tuning (the paper gives none): 30 epochs at lr 5e-5 per 512 images, no warm-up, mixup or cutmix
    "overlock_b_384": TrainConfig(
        model="overlock_b", drop_path=0.5, output="runs/overlock_b_384",
        **dict(_PAPER, img_size=384, epochs=30, base_lr=1e-4, min_lr=1e-6, warmup_epochs=0, weight_decay=1e-8,
               mixup=0.0, cutmix=0.0),
    ),
    # the main job: a small OverLoCK on real Fashion-MNIST, sized for 10 minutes on a 2-core CPU
    "fashion_mnist": TrainConfig(
        model="test_overlock",
        model_kwargs=dict(kernel_sizes=(5, 5, 5, 5), sub_depths=(1, 1)),
        dataset="fashion_mnist",
        img_size=32,
        epochs=4,
        batch_size=256,
        lr=4e-3,
        min_lr=1e-5,
        warmup_epochs=0.05,
        weight_decay=0.05,
        clip_grad=5.0,
        drop_path=0.0,
        ema_decay=0.0,
        auto_augment=None,
        mixup=0.0,
        cutmix=0.0,
        label_smoothing=0.1,
        reprob=0.0,
        workers=0,  # loading in the training process: a worker would compete with the two compute threads
        channels_last=True,
        output="runs/fashion_mnist",
    ),
}


def preset(name: str) -> TrainConfig:
    """The preset ``name`` (a variant name, 'ablation', 'overlock_b_384' or 'fashion_mnist')."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def with_ablation_row(cfg: TrainConfig, row: Any, given: Iterable[str] = ()) -> TrainConfig:
    """``cfg`` running the ablation ``row`` (an ``overlock.models.AblationRow``): its timm model and its training
    options (such as the auxiliary-loss weight), except the options named in ``given``, which the user set."""
    given = set(given)
    return cfg.updated(model=row.model, **{k: v for k, v in row.train.items() if k not in given})
