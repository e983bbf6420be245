"""The training loop every trainer runs: a task gives its batches, losses, evaluation and checkpoint contents as
hooks; the loop does the rest the same way for all of them.

What the loop owns: cycling the data in passes (epochs) positioned by (pass, micro-batch) so that a resumed run
continues with the sample it would have drawn next; seeding each micro-batch's own random draws; gradient
accumulation (DDP synchronising only on an optimizer step's last micro-batch); autocast; the stop on a non-finite
loss in any process; the optimizer step with gradient clipping and the AMP gradient scaler; the running training
loss since the last evaluation; progress (a bar on a terminal, log lines elsewhere); when to evaluate and when to
write the checkpoint; and stopping after ``max_steps`` at a point a resumed run continues from exactly.

Two kinds of run, as the recipes prescribe:

- epoch-based (``LoopPlan.epochs`` set; classification, detection): progress per epoch, evaluation and checkpoint
  at every epoch's end, the learning rate set by the task's ``after_step`` (a per-step scheduler);
- iteration-based (``epochs`` None; segmentation): ``total_steps`` iterations cycling the data, one progress over
  all of them, evaluation and checkpoint every ``eval_every`` iterations and at the end, the learning rate set by
  the task's ``before_step``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .checkpoint import save_atomic
from .distributed import DistInfo, all_reduce_sum
from .optimizer import optimizer_step
from .progress import Progress
from .seeding import seed_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of going on with broken weights."""


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint holds for the run to resume exactly (tasks save it under the keys
    ``step``, ``epoch`` and ``micro_in_epoch``, and ``sums`` under a key of their own)."""

    step: int = 0  # optimizer steps done
    data_pass: int = 0  # the pass over the training data under way (the epoch, counted from 0)
    micro: int = 0  # micro-batches of that pass done
    sums: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))  # loss x samples, samples,
    # skipped samples, in this process since the last evaluation

    @classmethod
    def resumed(cls, step: int, data_pass: int, micro: int, sums: Sequence[float], info: DistInfo) -> "LoopState":
        """The state a checkpoint recorded; its sums (the main process's totals) are shared out over the processes,
        so that their all-reduced total keeps its value."""
        shared = torch.tensor(list(sums), dtype=torch.float64, device=info.device) / info.world_size
        return cls(step, data_pass, micro, shared)


@dataclass(frozen=True)
class TrainingTotals:
    """The training figures since the last evaluation, summed over the processes."""

    mean_loss: float
    samples: int
    skipped: int


@dataclass
class PreparedBatch:
    """A batch ready for the model: ``inputs`` and ``targets`` on the device (a task's own types: tensors, or
    lists of images and per-image target dicts), the number of ``samples`` the loss averages over (weights the
    running loss) and the number of unusable samples the batch left out."""

    inputs: Any
    targets: Any
    samples: int
    skipped: int = 0


@dataclass(frozen=True)
class LoopPlan:
    """The shape of a run, in micro-batches and optimizer steps."""

    micro_per_pass: int  # micro-batches taken from each pass over the data (a whole number of steps)
    total_steps: int  # the length of the run's schedule, in optimizer steps
    accum_steps: int = 1  # micro-batches per optimizer step
    epochs: Optional[int] = None  # epoch-based runs: the passes to run; None: iteration-based (total_steps)
    eval_every: int = 0  # also evaluate and checkpoint every N steps (iteration-based: and at total_steps)
    save_every: int = 0  # also checkpoint every N steps
    max_steps: int = 0  # stop after N steps in all, resumable (0: no limit)
    seed: int = 0
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype of the forward pass and losses (None: full precision)
    clip_grad: Optional[float] = None  # gradient-norm clipping (None: none)
    bn_eval: bool = False  # BatchNorm statistics frozen while training

    @property
    def stop_step(self) -> float:
        """The step after which this invocation stops: ``max_steps`` when set (an epoch-based run also stops after
        its epochs), else the end of an iteration-based run."""
        if self.epochs is not None:
            return self.max_steps or math.inf
        return min(self.max_steps or self.total_steps, self.total_steps)


@dataclass
class LoopHooks:
    """What a task adds to the loop.

    ``prepare_batch(batch)``: a loader's batch moved to the device and made ready (augmentations that draw random
    numbers, such as Mixup, run here, after the micro-batch's seeding); raises a ``ValueError`` for an unusable one.
    ``compute_losses(train_model, inputs, targets)``: the losses under autocast, a dict whose ``"loss"`` is the
    total to minimise. ``before_step(state)``: before each optimizer step (``state.step`` steps done), e.g. set
    the learning rate. ``after_step(state, losses)``: after it (``state.step`` counts it), e.g. a scheduler, an
    EMA, the step logs. ``evaluate(state, totals)``: an evaluation, with the training figures since the last one
    (on every process; the main one logs). ``snapshot(state)``: the whole checkpoint to write.
    """

    prepare_batch: Callable[[Any], PreparedBatch]
    compute_losses: Callable[[nn.Module, Any, Any], dict[str, Tensor]]
    evaluate: Callable[[LoopState, TrainingTotals], None]
    snapshot: Callable[[LoopState], dict[str, Any]]
    before_step: Optional[Callable[[LoopState], None]] = None
    after_step: Optional[Callable[[LoopState, dict[str, Tensor]], None]] = None


@dataclass
class TrainingLoop:
    """A run's training objects, its plan and its task's hooks. ``loader`` iterates a
    :class:`~overlock.data.seeded.SeededDataset` through an :class:`~overlock.engine.sampler.EpochSampler` (the
    loop positions both); ``train_model`` is ``model`` or its DistributedDataParallel wrapper; ``checkpoint`` is
    the run's ``last.pth``, written by the main process."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: DataLoader
    info: DistInfo
    checkpoint: Path
    plan: LoopPlan
    hooks: LoopHooks
    _saved_step: int = field(default=-1, init=False, repr=False)  # the step of the checkpoint last written

    def run(self, state: LoopState) -> LoopState:
        """Train from ``state`` to the plan's end (or ``max_steps``), evaluating and checkpointing on the way."""
        plan, info = self.plan, self.info
        state.sums = state.sums.to(info.device)
        stop = plan.stop_step
        run_progress = None if plan.epochs is not None else Progress(
            plan.total_steps, state.step, "iterations", enabled=info.is_main, unit="iterations")
        while state.step < stop and (plan.epochs is None or state.data_pass < plan.epochs):
            self.loader.dataset.set_epoch(state.data_pass)
            self.loader.sampler.set_epoch(state.data_pass, skip=state.micro * self.loader.batch_size)
            self._train_mode()
            progress = run_progress or Progress(plan.micro_per_pass, state.micro,
                                                f"epoch {state.data_pass + 1}/{plan.epochs}", enabled=info.is_main)
            for batch in self.loader:
                if state.micro >= plan.micro_per_pass or state.step >= stop:
                    break
                losses = self._micro_step(state, batch)
                if run_progress is None:
                    progress.update(1)
                if state.micro % plan.accum_steps:
                    continue
                self._step(state, losses, progress, run_progress is not None, stop)
            if run_progress is None:
                progress.close()
            if state.micro < plan.micro_per_pass:  # stopped by max_steps inside the pass
                self._save(state)
                break
            state.data_pass, state.micro = state.data_pass + 1, 0
            if plan.epochs is not None:
                self._evaluate(state)
                self._save(state, force=True)  # last: a kill before this repeats the epoch's end
        if run_progress is not None:
            run_progress.close()
        return state

    def _train_mode(self) -> None:
        self.train_model.train()
        if self.plan.bn_eval:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _micro_step(self, state: LoopState, batch: Any) -> dict[str, Tensor]:
        """Forward and backward of one micro-batch, its gradients accumulated (and all-reduced on a step's last)."""
        plan, info = self.plan, self.info
        seed_step(plan.seed, state.data_pass, state.micro)
        prepared = self.hooks.prepare_batch(batch)
        state.sums[2] += prepared.skipped
        boundary = (state.micro + 1) % plan.accum_steps == 0
        sync = nullcontext() if boundary or not info.enabled else self.train_model.no_sync()
        with sync:
            with torch.autocast(info.device.type, dtype=plan.amp_dtype, enabled=plan.amp_dtype is not None):
                losses = self.hooks.compute_losses(self.train_model, prepared.inputs, prepared.targets)
            loss = losses["loss"]
            finite = all_reduce_sum(torch.isfinite(loss).float().to(info.device), info)
            if finite.item() < info.world_size:
                where = (f"epoch {state.data_pass + 1}, step {state.step}" if plan.epochs is not None
                         else f"iteration {state.step}")
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at {where}: stopping. Lower the learning rate, clip gradients "
                    f"(--clip-grad), or use bf16 instead of fp16; resume from {self.checkpoint} after changing the run"
                )
            self.scaler.scale(loss / plan.accum_steps).backward()
        state.sums[0] += loss.detach().double() * prepared.samples
        state.sums[1] += prepared.samples
        state.micro += 1
        return losses

    def _step(self, state: LoopState, losses: dict[str, Tensor], progress: Progress, count_steps: bool,
              stop: float) -> None:
        """The optimizer step ending a micro-batch group, then the task's after-step, evaluation and checkpoint."""
        plan = self.plan
        if self.hooks.before_step is not None:
            self.hooks.before_step(state)
        optimizer_step(self.model, self.optimizer, self.scaler, plan.clip_grad)
        state.step += 1
        if self.hooks.after_step is not None:
            self.hooks.after_step(state, losses)
        progress.set_postfix(loss=f"{losses['loss'].item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if count_steps:
            progress.update(1)
        at_end = plan.epochs is None and state.step == plan.total_steps
        evaluate_now = bool(plan.eval_every) and (state.step % plan.eval_every == 0 or at_end)
        if evaluate_now:
            self._evaluate(state)
            self._train_mode()
        if (evaluate_now or (plan.save_every and state.step % plan.save_every == 0)
                or (plan.epochs is None and state.step == stop)):
            self._save(state, force=True)

    def _evaluate(self, state: LoopState) -> None:
        totals = all_reduce_sum(state.sums, self.info)
        state.sums = torch.zeros_like(state.sums)
        figures = TrainingTotals(totals[0].item() / max(totals[1].item(), 1), round(totals[1].item()),
                                 round(totals[2].item()))
        self.hooks.evaluate(state, figures)

    def _save(self, state: LoopState, force: bool = False) -> None:
        """Write the checkpoint (main process), unless it already holds this step and ``force`` is not set."""
        if (force or self._saved_step != state.step) and self.info.is_main:
            save_atomic(self.hooks.snapshot(state), self.checkpoint)
        self._saved_step = state.step
