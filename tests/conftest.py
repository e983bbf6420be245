"""Shared fixtures: the official reference data in ../shared (skipped with a reason where absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import overlock  # noqa: F401  (registers the models in timm)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "fixtures" / "official_tiny.pt"
OFFICIAL_KEYS = SHARED / "spec" / "official_keys.json"
OFFICIAL_UPERNET_KEYS = SHARED / "spec" / "official_upernet_keys.json"
UPERNET_FIXTURE = SHARED / "fixtures" / "official_upernet_tiny.pt"
FIXTURE_INPUTS = ("64x64", "64x96", "224x160", "256x256")


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"official reference data not found at {path} (it lives in ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def official() -> dict:
    """Outputs of the official implementation for a small configuration (see ../shared/spec/README.md)."""
    return torch.load(_require(FIXTURE), weights_only=True)


@pytest.fixture(scope="session")
def official_keys() -> dict:
    """Every official state-dict key and shape, per model."""
    return json.loads(_require(OFFICIAL_KEYS).read_text())


@pytest.fixture(scope="session")
def official_upernet_keys() -> dict:
    """Every key and shape of the official UperNet models (mmsegmentation names)."""
    return json.loads(_require(OFFICIAL_UPERNET_KEYS).read_text())


@pytest.fixture(scope="session")
def official_upernet() -> dict:
    """Outputs of the official UperNet (mmsegmentation 0.30) for a small configuration (../shared/spec/README.md)."""
    return torch.load(_require(UPERNET_FIXTURE), weights_only=True)


@pytest.fixture(scope="session")
def official_kwargs(official) -> dict:
    """Our constructor arguments for the fixture's official configuration."""
    c = official["config"]
    return dict(
        depths=c["depth"],
        sub_depths=c["sub_depth"],
        embed_dims=c["embed_dim"],
        kernel_sizes=c["kernel_size"],
        mlp_ratios=c["mlp_ratio"],
        sub_num_heads=c["sub_num_heads"],
        sub_mlp_ratios=c["sub_mlp_ratio"],
        projection=c["projection"],
        num_classes=c["num_classes"],
    )


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
