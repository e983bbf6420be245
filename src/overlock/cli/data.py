"""``overlock data fashion-mnist OUT``: Fashion-MNIST as PNG image-folder trees, ``OUT/train`` and ``OUT/val``,
each class in its documented folder (``T-shirt/top`` in ``T-shirt%2Ftop``), ready for ``overlock train
--data-dir OUT`` and ``overlock validate --data-dir OUT/val``."""
from __future__ import annotations

import argparse

from .args import positive_int

DATASETS = ("fashion-mnist",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="the dataset to write")
    parser.add_argument("out", help="folder to write OUT/train/CLASS/*.png and OUT/val/CLASS/*.png into")
    parser.add_argument("--data-dir", help="folder of the IDX files (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--train-limit", type=positive_int, metavar="N", help="write only the first N training images")
    parser.add_argument("--test-limit", type=positive_int, metavar="N", help="write only the first N test images")


def run(args: argparse.Namespace) -> int:
    from overlock.data import write_fashion_mnist_folders

    written = write_fashion_mnist_folders(args.out, args.data_dir, args.train_limit, args.test_limit)
    print(f"wrote {written['train']} training images to {args.out}/train and {written['test']} test images to "
          f"{args.out}/val")
    return 0
