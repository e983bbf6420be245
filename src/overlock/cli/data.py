"""``overlock data fashion-mnist OUT``: Fashion-MNIST as PNG image-folder trees, ``OUT/train`` and ``OUT/val``,
each class in its documented folder (``T-shirt/top`` in ``T-shirt%2Ftop``), ready for ``overlock train
--data-dir OUT`` and ``overlock validate --data-dir OUT/val``.

``overlock data shapes OUT``: generated images of discs, squares and triangles with their exact masks, in the
segmentation folder layout (``OUT/images``, ``OUT/masks``, ``OUT/classes.txt``), ready for ``overlock seg train
--preset shapes --data-dir OUT``, and as COCO instances of the same images (``OUT/annotations/instances_{train,val}
.json``), ready for ``overlock det train --preset shapes --data-dir OUT``."""
from __future__ import annotations

import argparse

from .args import positive_int

DATASETS = ("fashion-mnist", "shapes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="the dataset to write")
    parser.add_argument("out", help="folder to write OUT/train/CLASS/*.png and OUT/val/CLASS/*.png into")
    parser.add_argument("--data-dir", help="folder of the IDX files (default: Debian's dataset-fashion-mnist)")
    parser.add_argument("--train-limit", type=positive_int, metavar="N", help="write only the first N training images")
    parser.add_argument("--test-limit", type=positive_int, metavar="N", help="write only the first N test images")
    parser.add_argument("--train-count", type=positive_int, default=256, metavar="N", help="shapes: training images")
    parser.add_argument("--val-count", type=positive_int, default=64, metavar="N", help="shapes: validation images")
    parser.add_argument("--size", type=positive_int, default=64, help="shapes: image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="shapes: random seed")


def run(args: argparse.Namespace) -> int:
    from overlock.data import write_fashion_mnist_folders

    if args.dataset == "shapes":
        from overlock.data.shapes import write_shapes_dataset

        written = write_shapes_dataset(args.out, args.train_count, args.val_count, args.size, args.seed)
        print(f"wrote {written['train']} training and {written['val']} validation images with masks and COCO "
              f"instances to {args.out}")
        return 0

    written = write_fashion_mnist_folders(args.out, args.data_dir, args.train_limit, args.test_limit)
    print(f"wrote {written['train']} training images to {args.out}/train and {written['test']} test images to "
          f"{args.out}/val")
    return 0
