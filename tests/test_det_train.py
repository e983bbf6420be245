"""Detection training: the official recipes' schedule and parameter groups; a small detector learning the
generated shapes; a killed run resuming to the same end as an uninterrupted one."""
from __future__ import annotations

import pytest
import torch
from probes import start_and_kill_at_step

from overlock.cli.main import main
from overlock.data.shapes import write_shapes_dataset
from overlock.detection.presets import DET_PRESETS, build_detector, det_preset, step_lr
from overlock.detection.train import train_detection
from overlock.engine.optimizer import substring_decay_groups


def test_official_recipes():
    one, three, cascade = (DET_PRESETS[n] for n in ("maskrcnn_overlock_t_1x", "maskrcnn_overlock_s_3x",
                                                     "cascade_overlock_b_3x"))
    assert (one.epochs, one.lr_steps, one.lr, one.pipeline, one.drop_path) == (12, [8, 11], 2e-4, "1x", 0.2)
    assert (three.epochs, three.lr_steps, three.lr, three.pipeline, three.drop_path) == (36, [27, 33], 1e-4, "3x", 0.4)
    assert cascade.cascade and cascade.drop_path == 0.6 and cascade.pipeline == "3x"
    for cfg in (one, three, cascade):
        assert (cfg.weight_decay, cfg.global_batch, cfg.warmup_iters, cfg.warmup_ratio) == (0.05, 16, 500, 0.001)
        assert "norm" in cfg.no_decay_keys


def test_step_schedule_with_linear_warmup():
    cfg = det_preset("maskrcnn_overlock_t_1x")
    assert step_lr(cfg, 0, 0) == pytest.approx(2e-4 * 0.001)
    assert step_lr(cfg, 250, 0) == pytest.approx(2e-4 * (1 - 0.5 * 0.999))  # mmcv: lr * (1 - (1 - i/500)(1 - r))
    assert step_lr(cfg, 500, 0) == pytest.approx(2e-4)
    assert step_lr(cfg, 10_000, 7) == pytest.approx(2e-4)
    assert step_lr(cfg, 10_000, 8) == pytest.approx(2e-5)
    assert step_lr(cfg, 10_000, 11) == pytest.approx(2e-6)


def test_no_weight_decay_for_norms_only():
    cfg = det_preset("shapes")
    model = build_detector(cfg, 3)
    decay, no_decay = substring_decay_groups(model, cfg.weight_decay, cfg.no_decay_keys)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert no_decay["params"] and all("norm" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("bias") for p in decay["params"])  # mmcv's rule: biases keep the decay


@pytest.mark.slow
def test_a_small_detector_learns_the_shapes(tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, train=256, val=32, size=64, seed=0)
    cfg = det_preset("shapes").updated(data_dir=str(data), output=str(tmp_path / "run"))
    summary = train_detection(cfg)
    assert summary["steps"] == 64 * cfg.epochs
    final = summary["final"]
    assert final["bbox_mAP_50"] >= 0.8 and final["segm_mAP_50"] >= 0.7, final


def _args(data, out, *extra):
    return ["det", "train", "--preset", "shapes", "--data-dir", str(data), "--output", str(out), "--epochs", "3",
            "--lr-steps", "2", "--warmup-iters", "4", *extra]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_end(tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, train=16, val=4, size=64, seed=0)
    assert main(_args(data, tmp_path / "ref")) == 0
    killed = tmp_path / "killed"
    last = killed / "last.pth"
    start_and_kill_at_step(_args(data, killed, "--save-every", "1"), last, 6, timeout=600)
    interrupted = torch.load(last, weights_only=True)
    assert 6 <= interrupted["step"] < 12
    assert main(["det", "train", "--output", str(killed), "--resume", "--save-every", "0"]) == 0
    ref, resumed = torch.load(tmp_path / "ref" / "last.pth", weights_only=True), torch.load(last, weights_only=True)
    assert resumed["step"] == ref["step"] == 12
    for key, value in ref["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    strip_time = [line.rsplit(",", 1)[0] for line in (tmp_path / "ref" / "metrics.csv").read_text().splitlines()]
    assert strip_time == [line.rsplit(",", 1)[0] for line in (killed / "metrics.csv").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path):
    """torchrun with 2 gloo processes of 2 images: a global batch of 4, evaluation shared out and gathered."""
    import json
    import os
    import socket
    import subprocess
    import sys

    data = tmp_path / "data"
    write_shapes_dataset(data, train=8, val=4, size=64, seed=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "overlock.cli.main",
           *_args(data, out, "--epochs", "1", "--batch-size", "2")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["step"] == 2 and state["epoch"] == 1  # 8 images, 2 x 2 a step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and "bbox_mAP" in summary["final"]
    assert "(4 images;" in subprocess.run(
        [sys.executable, "-m", "overlock.cli.main", "det", "validate", "--checkpoint", str(out / "last.pth"),
         "--data-dir", str(data), "--workers", "0"], capture_output=True, text=True, check=True).stdout
