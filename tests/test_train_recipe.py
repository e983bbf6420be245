"""Recipe wiring: presets, learning-rate rule, schedule, augmentation, losses."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from overlock.classification import PRESETS, TrainConfig, build_criterion, learning_rate, overlock_loss, preset, topk_correct
from overlock.classification.training import build_model


@pytest.mark.parametrize("variant, drop_path", [("overlock_xt", 0.1), ("overlock_t", 0.15), ("overlock_s", 0.4),
                                                ("overlock_b", 0.5)])
def test_paper_presets(variant, drop_path):
    cfg = preset(variant)
    assert cfg.model == variant and cfg.drop_path == drop_path
    assert (cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.clip_grad, cfg.aux_weight) == (300, 5, 0.05, 5.0, 0.4)
    assert (cfg.base_lr, cfg.min_lr, cfg.warmup_lr, cfg.ema_decay) == (1e-3, 1e-5, 1e-6, 0.9999)
    assert (cfg.mixup, cfg.cutmix, cfg.label_smoothing, cfg.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.auto_augment.startswith("rand-m9") and cfg.opt == "adamw"


def test_lr_scales_with_the_global_batch():
    cfg = preset("overlock_t").updated(batch_size=128, accum_steps=2)
    assert learning_rate(cfg, world_size=4) == pytest.approx(1e-3 * 1024 / 1024)
    assert learning_rate(cfg.updated(batch_size=64), world_size=1) == pytest.approx(1e-3 * 128 / 1024)
    assert learning_rate(cfg.updated(lr=3e-4), world_size=8) == 3e-4


def test_criteria():
    cfg = preset("overlock_xt")
    criterion, mixup = build_criterion(cfg, 1000)
    assert isinstance(criterion, SoftTargetCrossEntropy) and isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (0.8, 1.0, 0.1)
    criterion, mixup = build_criterion(cfg.updated(mixup=0.0, cutmix=0.0), 10)
    assert isinstance(criterion, LabelSmoothingCrossEntropy) and mixup is None
    criterion, _ = build_criterion(cfg.updated(mixup=0.0, cutmix=0.0, label_smoothing=0.0), 10)
    assert isinstance(criterion, nn.CrossEntropyLoss)


def test_folder_augmentation_follows_the_recipe(tmp_path):
    from PIL import Image

    from overlock.classification.training import build_datasets

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 40)).save(tmp_path / split / cls / "x.png")
    cfg = preset("overlock_xt").updated(data_dir=str(tmp_path))
    model = timm.create_model("test_overlock")
    train, val, classes, _ = build_datasets(cfg, model)
    text = str(train.transform)
    assert "RandAugment" in text and "RandomErasing" in text and "RandomResizedCrop" in text
    assert "CenterCrop" in str(val.transform) and classes == ["a", "b"]


def test_aux_loss_weighting():
    torch.manual_seed(0)
    main, aux, target = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    ce = nn.CrossEntropyLoss()
    loss, logits = overlock_loss((main, aux), target, ce, 0.4)
    expected = ce(main, target) + 0.4 * ce(aux, target)
    torch.testing.assert_close(loss, expected)
    assert logits is main
    loss, _ = overlock_loss(main, target, ce, 0.4)
    torch.testing.assert_close(loss, ce(main, target))


def test_topk_correct_known_case():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0])
    assert topk_correct(logits, target, ks=(1, 2, 5)) == [1, 2, 3]


def test_fine_tuning_from_official_weights_with_new_classes(official, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"state_dict": official["state_dict"]}, path)
    cfg = TrainConfig(model="test_overlock", pretrained=str(path), drop_path=0.0)
    model = build_model(cfg, num_classes=3)
    assert model.head[4].weight.shape[0] == 3 and model.aux_head[2].weight.shape[0] == 3
    torch.testing.assert_close(model.patch_embed1[0].weight, official["state_dict"]["patch_embed1.0.weight"])


def test_unknown_options_and_presets():
    with pytest.raises(ValueError, match="unknown training options: nope"):
        TrainConfig().updated(nope=1)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("overlock_xxl")
    assert set(PRESETS) >= {"overlock_xt", "overlock_t", "overlock_s", "overlock_b", "fashion_mnist"}


def test_command_line_overrides_the_preset():
    import argparse

    from overlock.cli.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(
        ["--model", "overlock_t", "--amp", "none", "--auto-augment", "none", "--lr", "0.002", "--no-channels-last"]))
    expected = preset("overlock_t").updated(amp="none", auto_augment=None, lr=0.002, channels_last=False)
    assert cfg == expected
    assert config_from_args(parser.parse_args([])) == preset("fashion_mnist")
    assert config_from_args(parser.parse_args(["--data-dir", "x"])).drop_path == preset("overlock_xt").drop_path
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp8"])
    peer = config_from_args(parser.parse_args(["--model", "test_resnet"]))  # a timm peer on the main job
    assert peer.dataset == "fashion_mnist" and peer.model_kwargs == {}
    kwargs = config_from_args(parser.parse_args(["--model", "test_resnet", "--model-kwargs", '{"a": 1}']))
    assert kwargs.model_kwargs == {"a": 1}
