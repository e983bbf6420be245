"""The shared training loop on a tiny model: a run stopped by max_steps and resumed from its checkpoint ends as the
uninterrupted run (epoch- and iteration-based plans, with accumulation and dropout), evaluations and checkpoints
come when the plan says, and a non-finite loss stops the run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from overlock.data.seeded import SeededDataset
from overlock.engine.checkpoint import load_training_checkpoint
from overlock.engine.distributed import DistInfo
from overlock.engine.loop import (
    LoopHooks, LoopPlan, LoopState, NonFiniteLossError, PreparedBatch, TrainingLoop, TrainingTotals,
)
from overlock.engine.sampler import EpochSampler
from overlock.engine.seeding import restore_rng, rng_state

SAMPLES, BATCH = 12, 2  # 6 micro-batches a pass


class NoisyPoints(Dataset):
    """Points with a random jitter drawn at load time (so the seeding of samples matters)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(SAMPLES, 4, generator=gen), torch.randn(SAMPLES, 1, generator=gen)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int):
        return self.x[index] + 0.1 * torch.randn(4), self.y[index]


def run(out: Path, plan: LoopPlan, resume: bool = False, loss_scale: float = 1.0) -> tuple[dict, list]:
    """Train a small MLP with dropout under ``plan`` (from ``out/last.pth`` when ``resume``); returns its weights
    and the evaluations' (step, pass, mean training loss, skipped)."""
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    seeded = SeededDataset(NoisyPoints(), seed=3)
    loader = DataLoader(seeded, BATCH, sampler=EpochSampler(SAMPLES, seed=3), drop_last=True)
    evaluations: list = []
    state = LoopState()
    if resume:
        saved = load_training_checkpoint(out / "last.pth")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        evaluations = [tuple(e) for e in saved["evaluations"]]
        state = LoopState.resumed(saved["step"], saved["epoch"], saved["micro_in_epoch"], saved["sums"], DistInfo())
        restore_rng(saved["rng"])

    def prepare(batch) -> PreparedBatch:
        x, y = batch
        return PreparedBatch(x, y, len(x), skipped=1)  # one made-up skipped sample a batch, to count

    def losses(net: nn.Module, x, y) -> dict:
        return {"loss": F.mse_loss(net(x), y) * loss_scale}

    def set_lr(at: LoopState) -> None:  # a schedule set before the step, as the segmentation trainer does
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (1 - at.step / plan.total_steps)

    def evaluate(at: LoopState, totals: TrainingTotals) -> None:
        evaluations.append((at.step, at.data_pass, totals.mean_loss, totals.skipped))

    def snapshot(at: LoopState) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {}, "epoch":
                at.data_pass, "step": at.step, "micro_in_epoch": at.micro, "sums": at.sums.tolist(), "config": {},
                "evaluations": evaluations, "rng": rng_state()}

    hooks = LoopHooks(prepare, losses, evaluate, snapshot, before_step=set_lr)
    TrainingLoop(model, model, optimizer, scaler, loader, DistInfo(), out / "last.pth", plan, hooks).run(state)
    return model.state_dict(), evaluations


ITERATIONS = LoopPlan(micro_per_pass=6, total_steps=10, accum_steps=2, eval_every=4)  # 3 steps a pass
EPOCHS = LoopPlan(micro_per_pass=6, total_steps=9, accum_steps=2, epochs=3)


@pytest.mark.parametrize("plan, stops", [(ITERATIONS, (2, 5, 7)), (EPOCHS, (2, 3, 7))], ids=["iterations", "epochs"])
def test_stopped_and_resumed_run_matches_the_uninterrupted_run(tmp_path, plan, stops):
    reference, expected = run(tmp_path / "ref", plan)
    out = tmp_path / "stopped"
    run(out, dataclasses.replace(plan, max_steps=stops[0]))
    for stop in stops[1:]:
        run(out, dataclasses.replace(plan, max_steps=stop), resume=True)
        assert torch.load(out / "last.pth", weights_only=True)["step"] == stop
    weights, evaluations = run(out, plan, resume=True)
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)
    assert [(e[0], e[1], e[3]) for e in evaluations] == [(e[0], e[1], e[3]) for e in expected]
    assert [e[2] for e in evaluations] == pytest.approx([e[2] for e in expected], rel=1e-12)


def test_iteration_plan_evaluates_every_n_steps_and_at_the_end(tmp_path):
    _, evaluations = run(tmp_path, ITERATIONS)
    # every 4 steps and at step 10; passes of 3 steps; the mean loss and skipped samples since the last evaluation
    assert [e[:2] for e in evaluations] == [(4, 1), (8, 2), (10, 3)]
    assert [e[3] for e in evaluations] == [8, 8, 4]  # 2 micro-batches a step, one skipped sample each
    final = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (final["step"], final["epoch"], final["micro_in_epoch"]) == (10, 3, 2)


def test_epoch_plan_evaluates_and_checkpoints_at_each_epoch_end(tmp_path):
    _, evaluations = run(tmp_path, EPOCHS)
    assert [e[:2] for e in evaluations] == [(3, 1), (6, 2), (9, 3)]
    assert [e[3] for e in evaluations] == [6, 6, 6]
    final = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (final["step"], final["epoch"], final["micro_in_epoch"]) == (9, 3, 0)


def test_a_non_finite_loss_stops_the_run(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at iteration 0"):
        run(tmp_path, ITERATIONS, loss_scale=float("inf"))
