"""Checkpoints written atomically, and read back without running code, with clear errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..weights_file import SAFETENSORS_SUFFIX, read_checkpoint, read_safetensors, write_atomic, write_safetensors


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be used: unreadable, unsafe, incomplete, or from another run."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either the old or the complete new file,
    even if the process is killed midway (temporary file in the same folder, fsync, rename)."""
    write_atomic(path, lambda f: torch.save(obj, f))


REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config")


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by a trainer (to resume), read as weights only and checked for completeness."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from at {path}")
    try:
        state = read_checkpoint(path)
    except ValueError as exc:  # not a checkpoint, corrupt, truncated, or holding code
        raise CheckpointError(str(exc)) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an overlock training checkpoint (missing {', '.join(missing)})")
    return state


RUN_METADATA_KEY = "overlock_run"  # safetensors metadata: the run's configuration, classes and figures as JSON


def save_run_weights(weights: dict[str, torch.Tensor], info: dict[str, Any], path: str | Path) -> None:
    """A run's weights as ``.safetensors`` (no pickle), atomically, with ``info`` (the run's configuration, class
    names, epoch and accuracy) as JSON in the file's metadata, so that the file alone rebuilds the run's model."""
    write_safetensors(weights, path, {"format": "pt", RUN_METADATA_KEY: json.dumps(info)})


def read_run_file(path: str | Path) -> Any:
    """A weights file as ``overlock train`` writes it: a ``.pth`` (whatever it holds, read as weights only) or a
    ``.safetensors`` file, returned as ``{"model": weights, **info}`` when its metadata holds a run's info, else
    as the bare weights. Raises ``CheckpointError`` naming the file when it cannot be read or would run code."""
    try:
        if Path(path).suffix != SAFETENSORS_SUFFIX:
            return read_checkpoint(path)
        weights, metadata = read_safetensors(path)
    except ValueError as exc:  # not a checkpoint, corrupt, truncated, or holding code
        raise CheckpointError(str(exc)) from exc
    if RUN_METADATA_KEY not in metadata:
        return weights
    try:
        info = json.loads(metadata[RUN_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the run information in its metadata is not valid JSON: {exc}") from exc
    return {**info, "model": weights}


def check_same_classes(saved: list[str] | None, found: list[str], data_dir: str | None) -> None:
    """Stop a resumed run whose data's classes (``found``) are not those it started with (``saved``; None in
    checkpoints that do not record them)."""
    if saved is None or list(saved) == found:
        return
    changes = []
    if gone := [c for c in saved if c not in found]:
        changes.append(f"missing now: {', '.join(map(repr, gone))}")
    if new := [c for c in found if c not in saved]:
        changes.append(f"new: {', '.join(map(repr, new))}")
    what = "; ".join(changes) or "another order"
    raise CheckpointError(f"the classes of {data_dir} changed since the run started ({what}): restore the class "
                          f"folders to resume, or start a new run")


RESUME_OVERRIDABLE = ("output", "workers", "save_every", "max_steps")  # what a resumed run may change


def resumed_config(state: dict[str, Any], path: Path, config_cls: type, overrides: dict[str, Any] | None,
                   output: str) -> Any:
    """The configuration a run's checkpoint ``state`` (read from ``path``) was made with, in ``output`` and changed
    only by ``overrides`` (fields of ``RESUME_OVERRIDABLE``; any other is a one-line error)."""
    unknown = set(overrides or {}) - set(RESUME_OVERRIDABLE)
    if unknown:
        raise ValueError(f"a resumed run keeps its settings; only {', '.join(RESUME_OVERRIDABLE)} may change, "
                         f"not {', '.join(sorted(unknown))}")
    try:
        saved = config_cls(**state["config"])
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} is not the checkpoint of a {config_cls.__name__} run: {exc}") from exc
    return saved.updated(output=output, **(overrides or {}))


def load_run_state(state: dict[str, Any], path: Path, **objects: Any) -> None:
    """Load ``state[name]`` into each of ``objects`` (model, optimizer, scheduler, scaler...; None is skipped), with a
    one-line error when the checkpoint does not fit them."""
    try:
        for name, target in objects.items():
            if target is not None:
                target.load_state_dict(state[name])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this run's model or optimizer: {exc}") from exc
