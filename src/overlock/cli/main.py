"""The ``overlock`` command: a thin dispatcher that imports a subcommand only when it runs.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. A user error (a bad file,
folder, model name or number) ends the command with one line naming the problem and exit status 1, never a
traceback: the commands raise the exceptions of :func:`is_user_error` and the dispatcher words them.
"""
from __future__ import annotations

import importlib
import logging
import sys

from .args import OneLineParser

COMMANDS: dict[str, str] = {
    "info": "parameters, FLOPs and configuration of a model",
    "train": "train or fine-tune a model (torchrun for several processes)",
    "ablate": "train the rows of an ablation table alike and write one comparison table (Markdown, CSV, plot)",
    "validate": "top-1/top-5 and loss on an image folder or robustness set",
    "seg": "semantic segmentation (UperNet): seg train, seg validate",
    "det": "object detection and instance masks ((Cascade) Mask R-CNN): det train, det validate, det predict",
    "predict": "top-k classes for images",
    "benchmark": "throughput, latency and memory against other timm models",
    "erf": "effective receptive fields of models side by side (RepLKNet's method): heat maps and area ratios",
    "cam": "Grad-CAM maps of each head at stages 3 and 4, as in the paper's Figure 2",
    "data": "write a dataset as image-folder trees (Fashion-MNIST as PNGs; generated shapes with masks)",
    "export": "write a model as a timm/Hugging Face folder, an ONNX file or a torch.export program",
    "convert": "turn an official OverLoCK checkpoint into a timm/Hugging Face model folder",
}

_logger = logging.getLogger(__name__)


def _usage() -> str:
    lines = ["usage: overlock COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, summary in COMMANDS.items()]
    lines += ["", "run 'overlock COMMAND -h' for the options of a command"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"overlock: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"overlock.cli.{name}")
    parser = OneLineParser(prog=f"overlock {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - user errors become one line; anything else keeps its traceback
        if not is_user_error(exc):
            raise
        _logger.debug("overlock %s failed", name, exc_info=True)
        raise SystemExit(f"overlock {name}: {one_line(exc)}") from None


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input (files, folders, names, numbers) rather than a fault of the program:
    missing or unreadable files and folders, invalid values (``ValueError``, which covers corrupt, unsafe and
    mismatched checkpoints and unknown class folders), checkpoints of another run, and a diverging loss."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
                        ValueError)):
        return True
    from overlock.engine.checkpoint import CheckpointError  # a light module: not the training loop

    loop = sys.modules.get("overlock.engine.loop")  # loaded when a trainer ran, and only then can it diverge
    diverged = loop is not None and isinstance(exc, loop.NonFiniteLossError)
    return isinstance(exc, CheckpointError) or diverged


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (multi-line messages, such as the key lists of a checkpoint that does
    not fit, joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
