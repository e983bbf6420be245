"""Arguments shared by the commands: the model option, and number types that reject bad values at parse time.

Every command that runs one model takes it as ``--model NAME``. ``validate``, ``erf`` and ``cam`` also still
accept the name as their first positional argument, their earlier form.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Collection
from typing import Any

MODEL_HELP = "timm model name, e.g. overlock_t (optional with a checkpoint of an overlock train run)"


def add_model_option(parser: argparse.ArgumentParser, help: str = MODEL_HELP, positional: bool = False) -> None:
    """``--model NAME``; with ``positional``, the earlier form (the name as the first positional argument) too,
    left out of the help. Read the name back with :func:`model_name`."""
    parser.add_argument("--model", help=help)
    if positional:
        parser.add_argument("positional_model", nargs="?", help=argparse.SUPPRESS)


def model_name(args: argparse.Namespace) -> str | None:
    """The model named by ``--model`` or by the positional form; an error when both name different models."""
    given = getattr(args, "positional_model", None)
    if given and args.model and given != args.model:
        raise ValueError(f"two models named: {given!r} and --model {args.model!r}; give one")
    return args.model or given


def _number(kind: type, check: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer of 0 or more")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
unit_fraction = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is for ``-h``), with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} -h')\n")


def preset_with_options(base: Any, given: dict[str, Any], model_field: str) -> Any:
    """The preset ``base`` (a config dataclass with ``updated``) with every option in ``given`` that names one of
    its fields applied; where the options change its model, the preset's model arguments are dropped with it."""
    fields = {f.name for f in dataclasses.fields(base)}
    changes = {k: v for k, v in given.items() if k in fields}
    if changes.get(model_field, getattr(base, model_field)) != getattr(base, model_field):
        changes.setdefault("model_kwargs", {})
    return base.updated(**changes)


def add_run_folder_options(parser: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--overwrite``: what a training command does with a run folder that already holds a run."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from last.pth")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --output")


def resume_overrides(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The options a resumed run takes from the command line (``RESUME_OVERRIDABLE`` but ``output``); the other
    configuration options given are named as ignored."""
    from overlock.engine.checkpoint import RESUME_OVERRIDABLE

    fields = {f.name for f in dataclasses.fields(config_cls)}
    ignored = sorted(k for k in vars(args) if k in fields and k not in RESUME_OVERRIDABLE)
    if ignored:
        print(f"--resume continues the run with its own settings; ignoring: {', '.join(ignored)}")
    return {k: v for k, v in vars(args).items() if k in RESUME_OVERRIDABLE and k != "output"}


def none_or(kind: type) -> Callable[[str], Any]:
    """An argparse type: 'none' (any case) for None, else the value parsed by ``kind``."""
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_config_options(
    parser: argparse.ArgumentParser, config: type, helps: dict[str, str], choices: dict[str, tuple[str, ...]],
    overrides: dict[str, dict[str, Any]] | None = None, only: Collection[str] | None = None,
) -> None:
    """One ``--field-name`` option per field of the config dataclass ``config`` (of the fields named in ``only``,
    when given), parsed by the field's type: booleans as ``--x/--no-x``, dicts as JSON, lists as several values,
    optional fields taking 'none'; an option left out is absent from the namespace (the preset keeps its value).
    ``overrides`` gives a field's own argparse arguments. ``parser`` may be an argument group."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        extra = dict(default=argparse.SUPPRESS, help=helps.get(f.name))  # absent: keep the preset
        options = typing.get_args(kind)
        base = next((t for t in options if t is not type(None)), kind) if options else kind
        if overrides and f.name in overrides:
            parser.add_argument(flag, **overrides[f.name], **extra)
        elif kind is bool or base is bool and type(None) in options:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **extra)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(flag, type=json.loads, **extra)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, type=options[0], nargs="+", **extra)
        elif type(None) in options:  # optional field: 'none' on the command line gives None
            parser.add_argument(flag, type=none_or(base), **extra)
        else:
            parser.add_argument(flag, type=kind, choices=choices.get(f.name), **extra)
