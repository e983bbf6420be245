"""The GPU check script: without a GPU it stops at once and says so (its GPU work is for machines with one)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run the script itself")
def test_without_a_gpu_it_exits_at_once_saying_so(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "no CUDA GPU is available here" in result.stderr
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60
