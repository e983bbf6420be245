"""The official implementation, from a user's own clone of LMMMEng/OverLoCK, for side-by-side benchmarks.

The official model file needs NATTEN 0.17 (``natten.functional.na2d_av``) and mmengine, which rarely
install on current PyTorch. ``load_official_model`` imports that file with stand-ins for both, so its
speed can be measured beside ours in one run. Nothing of the official code is part of this package.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops.custom_op import neighbourhood_av

PREFIX = "official:"


def unfold_na2d_av(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """The official no-NATTEN fallback's approach: unfold every K x K window (a K^2-times copy of
    ``value``), replicate-pad the windows to the border queries, and contract with the weights."""
    batch, groups, height, width, channels = value.shape
    k = kernel_size
    maps = value.permute(0, 1, 4, 2, 3).reshape(batch, groups * channels, height, width)
    windows = F.unfold(maps, k).reshape(batch, groups * channels * k * k, height - k + 1, width - k + 1)
    windows = F.pad(windows, [k // 2] * 4, mode="replicate")  # border queries reuse the clamped window
    windows = windows.reshape(batch, groups, channels, k * k, height, width)
    return torch.einsum("bghwn,bgcnhw->bghwc", attn, windows)


def overlock_na2d_av(attn: Tensor, value: Tensor, kernel_size: int) -> Tensor:
    """Our neighbourhood weighted sum (the op under ``contmix_apply``), on the softmaxed weights."""
    return neighbourhood_av(attn, value, kernel_size, "auto")


STAND_INS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "unfold": unfold_na2d_av,
    "overlock": overlock_na2d_av,
}


def _install_stand_ins(av: str) -> None:
    """Make ``natten.functional.na2d_av`` and ``mmengine.runner.load_checkpoint`` importable."""
    if av == "natten":
        importlib.import_module("natten.functional")  # the real package; fails clearly when absent
    else:
        if av not in STAND_INS:
            raise ValueError(f"unknown na2d_av stand-in {av!r}; choose natten, {', '.join(STAND_INS)}")
        natten = types.ModuleType("natten")
        natten.functional = types.ModuleType("natten.functional")
        natten.functional.na2d_av = STAND_INS[av]
        sys.modules.update({"natten": natten, "natten.functional": natten.functional})
    if "mmengine" not in sys.modules and importlib.util.find_spec("mmengine") is None:

        def load_checkpoint(*args, **kwargs):
            raise RuntimeError("loading official weights through mmengine is not supported in benchmarks")

        mmengine = types.ModuleType("mmengine")
        mmengine.runner = types.ModuleType("mmengine.runner")
        mmengine.runner.load_checkpoint = load_checkpoint
        sys.modules.update({"mmengine": mmengine, "mmengine.runner": mmengine.runner})


def _openmmlab_stand_ins(package: str) -> None:
    """Make the OpenMMLab names the official dense model files import available (``package`` is ``mmseg`` or
    ``mmdet``: a registry whose decorator leaves the builders as they are, a logger; mmcv's checkpoint loader),
    unless the real package is there."""
    if package in sys.modules or importlib.util.find_spec(package) is not None:
        return

    class _Registry:
        def register_module(self, *args, **kwargs):
            return lambda fn: fn

    def load_checkpoint(*args, **kwargs):
        raise RuntimeError("loading official weights through mmcv is not supported in benchmarks")

    modules = {name: types.ModuleType(name) for name in
               (package, f"{package}.models", f"{package}.models.builder", f"{package}.utils", "mmcv", "mmcv.runner")}
    modules[f"{package}.models.builder"].MODELS = _Registry()
    modules[f"{package}.utils"].get_root_logger = lambda *args, **kwargs: logging.getLogger("official")
    modules["mmcv.runner"].load_checkpoint = load_checkpoint
    sys.modules.update({name: module for name, module in modules.items()
                        if not (name.startswith("mmcv") and name in sys.modules)})


def _exec_official_file(path: Path, module_name: str) -> types.ModuleType:
    """Import the official model file at ``path`` under a private name, its model registrations kept to itself."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # the official file registers its models under our names: give it a registry of its own
    quiet_registry = types.ModuleType("timm.models.registry")
    quiet_registry.register_model = lambda fn: fn
    saved = sys.modules.get("timm.models.registry")
    sys.modules["timm.models.registry"] = quiet_registry
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the official code prints while building layers
            spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["timm.models.registry"]
        else:
            sys.modules["timm.models.registry"] = saved
    return module


def _build(module: types.ModuleType, name: str, **kwargs) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):
        builder = getattr(module, name.removeprefix(PREFIX), None)
        if builder is None:
            raise ValueError(f"the official model file has no model {name.removeprefix(PREFIX)!r}")
        return builder(**kwargs)


def load_official_model(repo: str | Path, name: str, av: str = "unfold", **kwargs) -> nn.Module:
    """Build the official ``name`` (e.g. ``overlock_xt``) from the clone at ``repo``.

    ``av`` picks what computes ``na2d_av``: ``natten`` (the real package), ``unfold`` (the official
    no-NATTEN fallback's approach) or ``overlock`` (our op, to compare the rest of the network).
    """
    path = Path(repo) / "models" / "overlock.py"
    if not path.is_file():
        raise FileNotFoundError(f"no official model file at {path}: pass the root of a clone of LMMMEng/OverLoCK")
    _install_stand_ins(av)
    return _build(_exec_official_file(path, "overlock_official_models"), name, **kwargs)


def _load_official_dense_backbone(repo: str | Path, task: str, package: str, name: str, av: str,
                                  **kwargs) -> nn.Module:
    path = Path(repo) / task / "models" / "overlock.py"
    if not path.is_file():
        raise FileNotFoundError(f"no official {task} model file at {path}: pass the root of a clone of "
                                f"LMMMEng/OverLoCK")
    _install_stand_ins(av)
    _openmmlab_stand_ins(package)
    return _build(_exec_official_file(path, f"overlock_official_{task}"), name, **kwargs)


def load_official_segmentation_backbone(repo: str | Path, name: str, av: str = "unfold", **kwargs) -> nn.Module:
    """Build the official UperNet backbone ``name`` (e.g. ``overlock_t``) from ``segmentation/models/overlock.py`` of
    the clone at ``repo``: forward gives the four pyramid levels. ``av`` as for ``load_official_model``."""
    return _load_official_dense_backbone(repo, "segmentation", "mmseg", name, av, **kwargs)


def load_official_detection_backbone(repo: str | Path, name: str, av: str = "unfold", **kwargs) -> nn.Module:
    """Build the official Mask R-CNN backbone ``name`` (e.g. ``overlock_t``) from ``detection/models/overlock.py`` of
    the clone at ``repo``: forward gives the four pyramid levels. ``av`` as for ``load_official_model``."""
    return _load_official_dense_backbone(repo, "detection", "mmdet", name, av, **kwargs)
