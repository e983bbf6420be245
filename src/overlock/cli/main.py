"""The ``overlock`` command: a thin dispatcher that imports a subcommand only when it runs.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, str] = {
    "info": "parameters, FLOPs and configuration of a model",
    "train": "train or fine-tune a model (torchrun for several processes)",
    "validate": "top-1/top-5 and loss on an image folder or robustness set",
    "seg": "semantic segmentation (UperNet): seg train, seg validate",
    "predict": "top-k classes for images",
    "benchmark": "throughput, latency and memory against other timm models",
    "erf": "effective receptive field of a model, as a heat map",
    "cam": "Grad-CAM class-activation map of a prediction",
    "data": "write a dataset as image-folder trees (Fashion-MNIST as PNGs; generated shapes with masks)",
}


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
    parser = argparse.ArgumentParser(prog=f"overlock {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
