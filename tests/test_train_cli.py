"""``overlock train`` from the command line: --resume keeps the run's own settings (--max-steps included) unless a
new value is given; progress is a live bar on a terminal and a few log lines elsewhere."""
from __future__ import annotations

import io
import json
import logging

import torch

from overlock.cli.main import main
from overlock.engine.progress import Progress
from test_train_runs import cli_args, make_folder, tiny_config


def _steps(run) -> int:
    return json.loads((run / "summary.json").read_text())["steps"]


def test_resume_keeps_the_runs_own_max_steps(tmp_path, caplog):
    data = make_folder(tmp_path / "data", per_class=4)  # 12 images: 6 steps of 2 an epoch
    run = tmp_path / "run"
    args = cli_args(tiny_config(data, run, epochs=2, batch_size=2, ema_decay=0.0))
    with caplog.at_level(logging.INFO):
        assert main(args + ["--max-steps", "2"]) == 0
        assert _steps(run) == 2
        assert main(["train", "--resume", "--output", str(run)]) == 0
        assert _steps(run) == 2  # the run's own --max-steps: nothing more to do
        assert main(["train", "--resume", "--output", str(run), "--max-steps", "4"]) == 0
    assert _steps(run) == 4
    assert torch.load(run / "last.pth", weights_only=True)["config"]["max_steps"] == 4
    progress = [r.getMessage() for r in caplog.records if r.name == "overlock.engine.progress"]
    # not a terminal: one line where the steps of an epoch end (here at --max-steps), none per step
    assert [line.split(", loss")[0] for line in progress] == ["epoch 1/2: 2/6 batches", "epoch 1/2: 4/6 batches"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_a_line_every_interval(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="overlock.engine.progress"):
        progress = Progress(1000, desc="epoch 1/1", stream=io.StringIO(), interval=20, clock=clock)
        for _ in range(1000):  # 1000 steps of 0.125 s: 125 s
            clock.now += 0.125
            progress.update()
            progress.set_postfix(loss="0.5")
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 125 // 20 + 1  # every 20 s, and the last
    assert lines[0] == "epoch 1/1: 160/1000 batches, loss 0.5, 20 s"
    assert lines[-1] == "epoch 1/1: 1000/1000 batches, loss 0.5, 125 s"


def test_progress_on_a_terminal_is_a_bar(caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="overlock.engine.progress"):
        progress = Progress(10, desc="epoch 1/1", stream=stream)
        for _ in range(10):
            progress.update()
        progress.close()
    assert "epoch 1/1" in stream.getvalue() and not caplog.records


def test_progress_of_other_processes_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="overlock.engine.progress"):
        progress = Progress(10, stream=io.StringIO(), enabled=False)
        progress.update(10)
        progress.close()
    assert not caplog.records
