"""What the trainers' run configurations share: changing fields by name, and the micro-batches of one step."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config", bound="RunConfig")


class RunConfig:
    """Base of the trainers' configuration dataclasses."""

    def updated(self: Config, **changes: Any) -> Config:
        """A copy with ``changes``; an unknown field is a one-line error naming it."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)



class GlobalBatchConfig(RunConfig):
    """A run configuration whose step is given as ``global_batch`` images over all processes, ``batch_size`` per
    process (the dense trainers)."""

    def accum_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step so that each step sees ``global_batch`` images."""
        per_step = self.batch_size * world_size
        if self.global_batch % per_step:
            raise ValueError(f"--global-batch {self.global_batch} is not a multiple of --batch-size {self.batch_size}"
                             f" x {world_size} processes")
        return self.global_batch // per_step
