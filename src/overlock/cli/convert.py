"""``overlock convert FILE DIR``: an official OverLoCK checkpoint (GitHub release of LMMMEng/OverLoCK, any of its
wrappers) as a timm / Hugging Face model folder, the one ``overlock export`` writes. The variant is recognised
from the checkpoint's keys and shapes unless ``--model`` names it."""
from __future__ import annotations

import argparse

from .args import add_model_option, model_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="FILE", help="official .pth checkpoint (classification, training or "
                                                          "re-parameterised form)")
    parser.add_argument("out", metavar="DIR", help="folder to write (created; it must be empty unless --overwrite)")
    add_model_option(parser, help="variant, e.g. overlock_t or overlock_t_reparam (default: recognised from the file)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")


def run(args: argparse.Namespace) -> int:
    from overlock.export import convert_official
    from overlock.weights_file import check_checkpoint_file

    from .export import output_folder

    check_checkpoint_file(args.checkpoint)  # a bad file stops before the folder is made
    folder = output_folder(args.out, args.overwrite)
    source = convert_official(args.checkpoint, folder, model_name(args))
    print(f"wrote {folder}/ (config.json, model.safetensors, README.md): {source.architecture} with "
          f"{source.model.num_classes} classes from {args.checkpoint}; load it with "
          f"timm.create_model('local-dir:{folder}', pretrained=True) after import overlock")
    return 0
