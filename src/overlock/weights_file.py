"""Weights files read without running code, and written atomically.

A PyTorch checkpoint is a pickle, and unpickling can call any function the file names. Every checkpoint a user
or a run hands to overlock is therefore read with ``torch.load(weights_only=True)``: tensors, containers and
plain Python values only, and ``argparse.Namespace``, which timm's training checkpoints hold and timm's own
loader allows. A file that names anything else is refused before it is loaded, with the names it asks for.
``.safetensors`` files hold no code at all.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "UnsafeCheckpointError",
    "check_checkpoint_file",
    "read_checkpoint",
    "read_safetensors",
    "unsafe_globals",
    "write_atomic",
    "write_safetensors",
]

SAFETENSORS_SUFFIX = ".safetensors"
_LEGACY_PICKLE_START = b"\x80\x02"  # a pre-1.6 torch.save file: a bare pickle stream


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would run code, or build objects other than data, when unpickled."""


@contextmanager
def _plain_data_allowed() -> Iterator[None]:
    """Weights-only loading that also reads ``argparse.Namespace``, as timm's loader does (its training
    checkpoints keep their arguments so): a plain record of values, built without calling anything else."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        yield


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def _is_legacy_pickle(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == _LEGACY_PICKLE_START


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """Names of the functions and classes a ``torch.save`` zip file would call when unpickled, other than those a
    weights-only load allows; read from the pickle's opcodes, without unpickling anything."""
    with _plain_data_allowed():
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def _refusal(path: Path, names: list[str]) -> UnsafeCheckpointError:
    what = f" {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
    return UnsafeCheckpointError(
        f"refusing to load {path}: unpickling it would call{what or ' code'} beyond tensors and plain values, which "
        f"could run any code; only weights are read (a .safetensors file, or torch.save of a state dict, loads)"
    )


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Clear errors, before anything is loaded, for a missing file, one that is no checkpoint (truncated or
    corrupt) and one that would run code; cheap: only the pickle's opcodes are read, never the tensors."""
    path = _require_file(path)
    if path.suffix == SAFETENSORS_SUFFIX or _is_legacy_pickle(path):
        return  # safetensors holds no code; a legacy pickle is checked as it is loaded
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read checkpoint file {path}: not a PyTorch checkpoint (truncated or corrupt?)")
    try:
        names = unsafe_globals(path)
    except (RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise ValueError(f"cannot read checkpoint file {path}: {_first_line(exc)}") from exc
    if names:
        raise _refusal(path, names)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The contents of a checkpoint file, read without running code.

    ``.safetensors``: the dict of tensors. Anything else: ``torch.load(weights_only=True)`` on the CPU.
    Raises ``FileNotFoundError``, ``ValueError`` (not a checkpoint, truncated, corrupt) or
    ``UnsafeCheckpointError``, each with a one-line message naming the file.
    """
    path = _require_file(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path)[0]
    check_checkpoint_file(path)
    try:
        with _plain_data_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a legacy pickle that names code, or a broken pickle stream
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if named:
            raise _refusal(path, [named.group(1)]) from exc
        raise ValueError(f"cannot read checkpoint file {path}: {_first_line(exc)}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read checkpoint file {path}: {_first_line(exc)}") from exc


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of a ``.safetensors`` file and its metadata (string to string)."""
    from safetensors import SafetensorError, safe_open

    path = _require_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read safetensors file {path}: {_first_line(exc)}") from exc


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the complete new file, even if the
    process is killed midway (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """``tensors`` (made contiguous, on the CPU) as a ``.safetensors`` file, written atomically."""
    from safetensors.torch import save

    plain = {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    data = save(plain, metadata=metadata)
    write_atomic(path, lambda f: f.write(data))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
