"""Whole training runs on tiny data: kill -9 and resume, 2 processes vs 1, run folders, bad input."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from overlock.classification import TrainConfig, train
from overlock.engine.checkpoint import CheckpointError
from overlock.engine.loop import NonFiniteLossError
from probes import start_and_kill_at_step

TINY = dict(kernel_sizes=[5, 5, 5, 5], sub_depths=[1, 1])


def make_folder(root: Path, classes=("ant", "bee", "cat"), per_class=8, size=36, seed=0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 3):
                pixels = (torch.rand(size, size, 3, generator=gen) * 60 + 60 * c).byte().numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="test_overlock", model_kwargs=TINY, dataset="folder", data_dir=str(data), img_size=32, epochs=3,
        batch_size=4, lr=1e-3, warmup_epochs=0.5, drop_path=0.0, ema_decay=0.9, auto_augment=None, mixup=0.0,
        cutmix=0.0, reprob=0.0, workers=0, output=str(out),
    )
    return base.updated(**changes)


def cli_args(cfg: TrainConfig) -> list[str]:
    args = ["train", "--model", cfg.model, "--model-kwargs", '{"kernel_sizes": [5, 5, 5, 5], "sub_depths": [1, 1]}',
            "--data-dir", cfg.data_dir, "--img-size", "32", "--epochs", str(cfg.epochs), "--batch-size",
            str(cfg.batch_size), "--lr", str(cfg.lr), "--warmup-epochs", str(cfg.warmup_epochs), "--drop-path", "0",
            "--ema-decay", str(cfg.ema_decay), "--auto-augment", "none", "--mixup", "0", "--cutmix", "0",
            "--reprob", "0", "--workers", "0", "--amp", cfg.amp, "--output", cfg.output]
    if cfg.bn_eval:
        args.append("--bn-eval")
    if cfg.save_every:
        args += ["--save-every", str(cfg.save_every)]
    return args


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data"))


def test_resume_after_kill_9_matches_uninterrupted_run(data, tmp_path):
    reference = tiny_config(data, tmp_path / "ref", epochs=5)  # long enough to be killed mid-run
    expected = train(reference)
    killed = reference.updated(output=str(tmp_path / "killed"), save_every=1)
    last = Path(killed.output) / "last.pth"
    start_and_kill_at_step(cli_args(killed), last, 4, timeout=120)
    interrupted = torch.load(last, weights_only=True)
    assert {**interrupted["config"], "output": reference.output, "save_every": 0} == dataclasses.asdict(reference)
    assert interrupted["step"] < expected["steps"], "the run finished before it could be killed"
    assert interrupted["micro_in_epoch"] > 0 or interrupted["epoch"] > 0
    resumed = train(killed, resume=True, overrides={"save_every": 0})
    assert resumed["steps"] == expected["steps"]
    assert resumed["final"]["top1"] == pytest.approx(expected["final"]["top1"])
    assert resumed["final"]["loss"] == pytest.approx(expected["final"]["loss"], rel=1e-5)
    for key, value in weights(tmp_path / "ref").items():
        torch.testing.assert_close(weights(tmp_path / "killed")[key], value, rtol=1e-5, atol=1e-6, msg=key)

    def metrics(run: str) -> list[float]:  # the logs read as one run: no repeated rows, same losses
        rows = (tmp_path / run / "metrics.csv").read_text().strip().splitlines()[1:]
        return [float(v) for row in rows for v in row.split(",")[:7]]

    assert metrics("killed") == pytest.approx(metrics("ref"), rel=1e-5)


def test_run_folder_outputs(data, tmp_path):
    summary = train(tiny_config(data, tmp_path / "run", epochs=2))
    run = tmp_path / "run"
    for name in ("last.pth", "best.pth", "ema.pth", "metrics.csv", "steps.csv", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "tb").is_dir()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,lr")
    assert summary["epochs"] == 2 and summary["steps"] == 2 * (24 // 4)
    state = torch.load(run / "last.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "rng"} <= set(state)


def test_existing_run_folder_is_not_overwritten(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "run", epochs=1)
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    train(cfg, overwrite=True)


def test_corrupt_checkpoint_gives_clear_error(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(tiny_config(data, out), resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(tiny_config(data, tmp_path / "empty"), resume=True)


def test_non_finite_loss_stops_the_run(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "nan", lr=1e30, clip_grad=None, warmup_epochs=0)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(cfg)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        train(tiny_config(tmp_path / "missing", tmp_path / "o1"))
    root = make_folder(tmp_path / "d", per_class=2)
    (root / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match="empty class folders.*dog"):
        train(tiny_config(root, tmp_path / "o2"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        train(TrainConfig(dataset="fashion_mnist", data_dir=str(tmp_path), output=str(tmp_path / "o3")))


def test_corrupt_images_are_skipped_and_counted(data, tmp_path):
    root = make_folder(tmp_path / "d", per_class=4)
    (root / "train" / "ant" / "broken.png").write_bytes(b"not an image")
    (root / "val" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    summary = train(tiny_config(root, tmp_path / "run", epochs=1, batch_size=13))
    assert summary["final"]["skipped"] == 1 and summary["final"]["images"] == 9
    row = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert row[8] == "1"  # skipped_images during training


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_same_model_as_one(data, tmp_path):
    """torchrun with 2 gloo processes of batch 4 == 1 process of batch 8 (BN statistics frozen)."""
    single = tiny_config(data, tmp_path / "one", epochs=1, batch_size=8, bn_eval=True, ema_decay=0.0)
    train(single)
    double = tiny_config(data, tmp_path / "two", epochs=1, batch_size=4, bn_eval=True, ema_decay=0.0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "overlock.cli.main", *cli_args(double)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert torch.load(tmp_path / "two" / "last.pth", weights_only=True)["step"] == 24 // 8
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
