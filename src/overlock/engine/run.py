"""How every trainer starts a run: the process group, the run folder and the configuration (the checkpoint's own
when resuming), the checkpoint's state restored into the run's objects, and the logs cut back to the checkpoint."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import check_same_classes, load_run_state, load_training_checkpoint, resumed_config
from .distributed import DistInfo, init_distributed
from .loop import LoopState
from .run_logs import CsvLog, open_tensorboard, prepare_output
from .seeding import restore_rng

_logger = logging.getLogger(__name__)


@dataclass
class RunStart:
    """A run about to train: its processes, folder, configuration and, when resumed, the checkpoint it continues."""

    info: DistInfo
    out: Path
    cfg: Any
    state: dict[str, Any] | None  # the checkpoint being resumed; None for a new run

    @property
    def checkpoint(self) -> Path:
        return self.out / "last.pth"

    def prepare_folder(self, overwrite: bool, extra_files: tuple[str, ...] = ()) -> None:
        """A new run claims its folder (main process): refused where results lie unless ``overwrite``."""
        if self.state is None and self.info.is_main:
            prepare_output(self.out, False, overwrite, extra_files)

    def check_classes(self, classes: list[str]) -> None:
        """A resumed run must see the classes it was trained on."""
        if self.state is not None:
            check_same_classes(self.state.get("classes") or None, classes, self.cfg.data_dir)

    def restore(self, sums_key: str = "sums", **objects: Any) -> LoopState:
        """Load the checkpoint into ``objects`` (model, optimizer, scaler...: the checkpoint's keys) and restore the
        random states; the loop position to continue from (the start for a new run)."""
        if self.state is None:
            return LoopState()
        load_run_state(self.state, self.checkpoint, **objects)
        restore_rng(self.state["rng"])
        state = self.state
        loop_state = LoopState.resumed(state["step"], state["epoch"], state["micro_in_epoch"],
                                       state.get(sums_key, [0.0] * 3), self.info)
        _logger.info("resumed %s at step %d (data pass %d)", self.out, loop_state.step, loop_state.data_pass + 1)
        return loop_state

    def open_logs(self, loop_state: LoopState, **files: list[str]) -> tuple[dict[str, CsvLog], Any]:
        """The run's CSV logs (``name=fields`` gives ``name.csv``) and TensorBoard writer (main process only, else
        None); a resumed run drops the rows its killed predecessor logged after the checkpoint."""
        logs = {name: CsvLog(self.out / f"{name}.csv", fields) for name, fields in files.items()}
        if not self.info.is_main:
            return logs, None
        if self.state is not None:
            for log in logs.values():
                log.truncate("step", loop_state.step)
        return logs, open_tensorboard(self.out, purge_step=loop_state.step if self.state is not None else None)


def start_run(cfg: Any, config_cls: type, resume: bool, overrides: dict[str, Any] | None = None) -> RunStart:
    """Join the process group and settle the configuration: ``cfg`` for a new run; for a resumed one the
    configuration saved in ``cfg.output``/last.pth, changed only by ``overrides`` (see ``resumed_config``)."""
    info, out = init_distributed(), Path(cfg.output)
    state = None
    if resume:
        state = load_training_checkpoint(out / "last.pth")
        cfg = resumed_config(state, out / "last.pth", config_cls, overrides, cfg.output)
    return RunStart(info, out, cfg, state)
