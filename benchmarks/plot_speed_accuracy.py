"""Speed-accuracy plot from the JSON files of several ``overlock benchmark --json`` runs.

The README's CPU plot combines the XT run (with the official implementation) and the T/S/B run::

    python benchmarks/plot_speed_accuracy.py xt.json tsb.json --out docs/img/speed_accuracy_cpu.png
"""
from __future__ import annotations

import argparse
import json

from overlock.benchmark import BenchResult, plot_speed_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="files written by overlock benchmark --json")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="cpu infer, batch 8, 224px, 2 threads")
    args = parser.parse_args()
    results = []
    for path in args.json:
        with open(path) as f:
            results += [BenchResult(**row) for row in json.load(f)]
    plot_speed_accuracy(results, args.out, args.title)
    print(f"wrote {args.out} ({len(results)} models)")


if __name__ == "__main__":
    main()
