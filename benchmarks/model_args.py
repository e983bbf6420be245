"""Command-line arguments and set-up shared by the whole-model benchmark scripts of this folder."""
from __future__ import annotations

import argparse

import timm
import torch

import overlock  # noqa: F401 - registers the models


def model_parser(description: str, iters: int) -> argparse.ArgumentParser:
    """A parser with the model, batch size, image size, rounds and threads every whole-model script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", nargs="?", default="overlock_xt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    return parser


def deploy_model(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The threads set, ``args.model`` in deploy form and eval mode (without the auxiliary head), and a random
    input batch for it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = timm.create_model(args.model, with_aux_head=False).eval()
    timm.utils.reparameterize_model(model, inplace=True)
    return model, torch.randn(args.batch_size, 3, args.img_size, args.img_size)
