"""What each preset builds: optimizer, schedule, augmentation, losses, drop path; accumulation, checkpointing
and AMP give the training the recipe asks for; resumed runs keep clean logs; checkpoints that do not fit."""
from __future__ import annotations

import csv
import math

import pytest
import timm
import torch
from timm.data import Mixup
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from overlock.data import FashionMNISTTransform
from overlock.classification import TrainConfig, build_criterion, preset, train
from overlock.engine.checkpoint import CheckpointError
from overlock.classification.training import build_model, build_optimizer, build_scheduler, folder_transforms
from test_train_runs import TINY, make_folder, tiny_config

PAPER = ("overlock_xt", "overlock_t", "overlock_s", "overlock_b")


def _tiny_model() -> torch.nn.Module:
    return timm.create_model("test_overlock", num_classes=10, **TINY)


@pytest.mark.parametrize("name", PAPER)
def test_paper_preset_optimizer_and_schedule(name):
    cfg = preset(name)
    model = _tiny_model()
    optimizer = build_optimizer(cfg, model, world_size=8)  # 8 x 128 images: lr 1e-3
    assert isinstance(optimizer, torch.optim.AdamW)
    peak = 1e-3 * 128 * 8 / 1024
    groups = {g["weight_decay"]: g for g in optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    decayed = {id(p) for p in groups[0.05]["params"]}
    for pname, p in model.named_parameters():  # timm's rule: no weight decay on biases and norm weights
        assert (id(p) in decayed) == (p.ndim > 1 and not pname.endswith(".bias")), pname

    steps_per_epoch = 1251  # 1.28 M images / 1024
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    warmup, total = 5 * steps_per_epoch, 300 * steps_per_epoch

    def lr_at(step: int) -> float:
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    def cosine(step: int) -> float:
        return 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * step / total))

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(warmup // 2) == pytest.approx(1e-6 + (peak - 1e-6) * (warmup // 2) / warmup)
    for step in (warmup, total // 2, total - 1):
        assert lr_at(step) == pytest.approx(cosine(step), rel=1e-9)
    assert lr_at(total) == pytest.approx(1e-5)


@pytest.mark.parametrize("name, drop_path", list(zip(PAPER, (0.1, 0.15, 0.4, 0.5))))
def test_paper_preset_augmentation_loss_and_drop_path(name, drop_path, tmp_path):
    cfg = preset(name)
    train_tf, val_tf = folder_transforms(cfg, timm.create_model("test_overlock"))
    ops = [type(t).__name__ for t in train_tf.transforms]
    assert ops[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    rand_augment = train_tf.transforms[2]
    assert type(rand_augment).__name__ == "RandAugment" and len(rand_augment.ops) == 15  # 'inc1': 15 ops
    assert all(op.magnitude == 9 for op in rand_augment.ops)
    erasing = [t for t in train_tf.transforms if type(t).__name__ == "RandomErasing"]
    assert len(erasing) == 1 and erasing[0].probability == 0.25
    val_ops = [type(t).__name__ for t in val_tf.transforms]
    assert "CenterCrop" in val_ops and "RandomErasing" not in val_ops

    criterion, mixup = build_criterion(cfg, 1000)
    assert isinstance(criterion, SoftTargetCrossEntropy) and isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.label_smoothing) == (0.8, 1.0, 1.0, 0.1)
    targets = mixup(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))[1]
    assert targets.shape == (4, 1000) and targets.sum(1).allclose(torch.ones(4))
    assert targets.min() == pytest.approx(0.1 / 1000)  # smoothing spreads 0.1 over the classes

    model = build_model(cfg.updated(model="test_overlock", model_kwargs=TINY), num_classes=10)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(drop_path)  # linear rule: the deepest block gets the rate


def test_fashion_mnist_preset_pipeline():
    cfg = preset("fashion_mnist")
    assert cfg.dataset == "fashion_mnist" and cfg.model == "test_overlock" and cfg.mixup == cfg.cutmix == 0
    criterion, mixup = build_criterion(cfg, 10)
    assert isinstance(criterion, LabelSmoothingCrossEntropy) and criterion.smoothing == cfg.label_smoothing
    assert mixup is None
    model = build_model(cfg, num_classes=10, in_chans=1)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == cfg.lr
    out = model.eval()(FashionMNISTTransform(cfg.img_size)(torch.zeros(1, 28, 28, dtype=torch.uint8))[None])
    assert out.shape == (1, 10)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pth", weights_only=True)["model"]


def test_gradient_accumulation_and_checkpointing_match_one_big_batch(data, tmp_path):
    """Batch 4 x 2 accumulated steps, with per-stage gradient checkpointing, trains the same model as batch 8."""
    common = dict(epochs=1, bn_eval=True, ema_decay=0.0)
    train(tiny_config(data, tmp_path / "big", batch_size=8, **common))
    summary = train(tiny_config(data, tmp_path / "acc", batch_size=4, accum_steps=2,
                                grad_checkpointing=[1, 1, 1, 1], **common))
    assert summary["steps"] == 24 // 8 and summary["lr"] == 1e-3
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    for key, value in big.items():
        torch.testing.assert_close(acc[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("amp", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_mixed_precision_runs(data, tmp_path, amp):
    summary = train(tiny_config(data, tmp_path / amp, epochs=1, amp=amp))
    assert summary["steps"] == 6 and math.isfinite(summary["final"]["loss"])
    scaler = torch.load(tmp_path / amp / "last.pth", weights_only=True)["scaler"]
    assert bool(scaler) == (amp == "fp16")  # the loss scaler is only used (and saved) for fp16


def test_resume_drops_log_rows_written_after_the_checkpoint(data, tmp_path):
    """A run killed after logging but before its next checkpoint must not log those steps twice."""
    cfg = tiny_config(data, tmp_path / "run", epochs=2)  # 6 steps an epoch, steps.csv every 10 steps
    reference = train(cfg.updated(output=str(tmp_path / "ref")))
    train(cfg.updated(max_steps=8))  # stops mid-epoch 2, checkpoint at step 8
    with (tmp_path / "run" / "steps.csv").open("a") as f:  # what a killed run may leave behind
        f.write("10,1,0.001,9.9\n")
    with (tmp_path / "run" / "metrics.csv").open("a") as f:
        f.write("2,12,0.001,9,9,0,0,,0,1\n")
    resumed = train(cfg, resume=True, overrides={"max_steps": 0})
    assert resumed["steps"] == reference["steps"] == 12

    def rows(run, name):
        with (tmp_path / run / name).open() as f:
            return list(csv.DictReader(f))

    assert [r["step"] for r in rows("run", "steps.csv")] == [r["step"] for r in rows("ref", "steps.csv")] == ["10"]
    assert float(rows("run", "steps.csv")[0]["loss"]) == pytest.approx(float(rows("ref", "steps.csv")[0]["loss"]))
    assert [r["epoch"] for r in rows("run", "metrics.csv")] == ["1", "2"]
    assert float(rows("run", "metrics.csv")[1]["val_top1"]) == pytest.approx(reference["final"]["top1"])


def test_resume_ignores_recipe_changes_but_takes_run_options(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "run", epochs=2, max_steps=3)
    train(cfg)
    resumed = train(cfg.updated(lr=0.5, epochs=9), resume=True, overrides={"max_steps": 0})  # lr/epochs: the run's own
    assert resumed["config"]["lr"] == 1e-3 and resumed["epochs"] == 2 and resumed["steps"] == 12


def test_mismatched_checkpoints_give_clear_errors(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "run", epochs=1)
    train(cfg)
    last = tmp_path / "run" / "last.pth"
    state = torch.load(last, weights_only=True)
    state["model"].pop("head.4.weight")
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="does not match this run's model"):
        train(cfg, resume=True)
    torch.save({"model": state["model"]}, last)  # weights only, e.g. best.pth copied over
    with pytest.raises(CheckpointError, match="not an overlock training checkpoint"):
        train(cfg, resume=True)


def test_fine_tuning_from_a_run_checkpoint_with_new_classes(data, tmp_path):
    train(tiny_config(data, tmp_path / "first", epochs=1))
    best = tmp_path / "first" / "best.pth"
    cfg = TrainConfig(model="test_overlock", model_kwargs=TINY, pretrained=str(best), drop_path=0.0)
    model = build_model(cfg, num_classes=5)
    source = torch.load(best, weights_only=True)["model"]
    assert model.head[4].weight.shape[0] == 5
    torch.testing.assert_close(model.patch_embed1[0].weight, source["patch_embed1.0.weight"])


def test_sync_batchnorm_only_where_pytorch_supports_it():
    from torch import nn

    from overlock.engine.distributed import DistInfo, sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert sync_batchnorm(model, DistInfo()) is model  # one process: nothing to synchronise
    with pytest.raises(ValueError, match="--sync-bn needs GPUs"):
        sync_batchnorm(model, DistInfo(rank=0, world_size=2))
    converted = sync_batchnorm(model, DistInfo(rank=0, world_size=2, device=torch.device("cuda", 0)))
    assert isinstance(converted[1], nn.SyncBatchNorm) and not isinstance(converted[0], nn.SyncBatchNorm)
