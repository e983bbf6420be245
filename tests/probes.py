"""Test helpers shared by several test files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def value_view(b, g, h, w, c, layout, gen, dtype):
    """A (B, G, H, W, C) value as ContMixMixer passes it: the second half of an NCHW map's channels ('planar'),
    of an NHWC map's ('channels_last'), or a plain contiguous tensor (any other layout)."""
    if layout == "planar":
        return torch.randn(b, 2, g, c, h, w, generator=gen, dtype=dtype).permute(1, 0, 2, 4, 5, 3)[1]
    if layout == "channels_last":
        return torch.randn(b, h, w, 2, g, c, generator=gen, dtype=dtype).permute(3, 0, 4, 1, 2, 5)[1]
    return torch.randn(b, g, h, w, c, generator=gen, dtype=dtype)


def start_and_kill_at_step(args: list[str], last: Path, step: int, timeout: float) -> None:
    """Runs ``overlock ARGS`` in a process of its own and kills it (SIGKILL) as soon as its checkpoint ``last``
    records ``step`` or more; fails where the run ends first."""
    proc = subprocess.Popen([sys.executable, "-m", "overlock.cli.main", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["step"] >= step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
