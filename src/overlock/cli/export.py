"""``overlock export DIR``: a model and its weights out of overlock.

``--format timm`` (the default) writes a timm / Hugging Face model folder (config.json, model.safetensors,
README.md model card) that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads after ``import overlock``
and ``huggingface_hub.upload_folder`` publishes as it is. ``--format onnx`` and ``--format pt2`` write the deploy
form as ``DIR/model.onnx`` or ``DIR/model.pt2`` (any batch and image size) with a config.json of its input and
classes, and compare the program's outputs with PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .args import add_model_option, model_name, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="DIR", help="folder to write (created; it must be empty unless --overwrite)")
    add_model_option(parser)
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors (default: the model's initial weights)")
    parser.add_argument("--format", choices=("timm", "onnx", "pt2"), default="timm",
                        help="timm: model folder for timm and the Hugging Face Hub; onnx: ONNX file; pt2: "
                             "torch.export program")
    parser.add_argument("--features-only", action="store_true",
                        help="onnx/pt2: the dense backbone (four-level pyramid, strides 4-32) instead of the "
                             "classifier")
    parser.add_argument("--img-size", type=positive_int, help="input size of the model card's MACs and of the "
                                                              "export's example and checks (default: the model's)")
    parser.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (18 or newer)")
    parser.add_argument("--no-check", action="store_true", help="onnx/pt2: skip comparing outputs with PyTorch's")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")


def output_folder(path: str, overwrite: bool) -> Path:
    """The folder to write, created; a folder that already holds files needs ``overwrite``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} already holds files: choose an empty folder or pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _require_onnx() -> None:
    """A one-line error, before any work, where the optional ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--format onnx needs onnx and onnxscript: pip install 'overlock[export]' ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    from overlock import export
    from overlock.classification.inference import load_model

    if args.format == "onnx":
        _require_onnx()
        for noisy in ("onnx_ir", "onnxscript"):  # their optimisation passes log every step at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.features_only and args.format == "timm":
        raise ValueError("--features-only applies to --format onnx and pt2 (a timm folder holds the classifier; "
                         "timm.create_model(..., features_only=True) builds its backbone)")
    size = (args.img_size, args.img_size) if args.img_size else None
    loaded = load_model(model_name(args), args.weights, img_size=args.img_size)
    source = export.source_from_loaded(loaded, args.weights)
    if size:
        source.data_config["input_size"] = (source.data_config["input_size"][0], *size)
    folder = output_folder(args.out, args.overwrite)
    if args.format == "timm":
        export.write_model_folder(source, folder)
        print(f"wrote {folder}/ (config.json, model.safetensors, README.md): {source.architecture}; load it with "
              f"timm.create_model('local-dir:{folder}', pretrained=True) after import overlock")
        return 0
    return _export_program(args, export, source, folder)


def _export_program(args: argparse.Namespace, export, source, folder: Path) -> int:
    model = export.dense_backbone(source, args.weights) if args.features_only else source.model
    input_size = source.data_config["input_size"]
    if args.format == "onnx":
        path = export.export_onnx(model, folder / "model.onnx", input_size, args.opset)
        outputs = ["level0", "level1", "level2", "level3"] if args.features_only else ["logits"]
    else:
        path = export.export_program(model, folder / "model.pt2", input_size)
        outputs = ["list of four levels"] if args.features_only else ["logits"]
    config = export.export_config(source, args.format, outputs)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and {folder / 'config.json'}: the deploy form of "
          f"{source.architecture}{' (dense backbone)' if args.features_only else ''}, any batch size, images of "
          f"{export.DYNAMIC_MIN_SIZE} px and more")
    if not args.no_check:
        _check(args.format, export, model, path, export.check_sizes(input_size))
    return 0


def _check(format: str, export, model, path: Path, sizes: list) -> None:
    if format == "onnx":
        try:
            errors = export.compare_onnx(model, path, sizes)
        except ImportError:
            print("onnxruntime is not installed: outputs not compared (pip install 'overlock[export]')")
            return
        against = "ONNX Runtime"
    else:
        errors = export.compare_program(model, path, sizes)
        against = "the reloaded program"
    shown = ", ".join(f"{e:.1e} at {h}x{w}" for e, (_, h, w) in zip(errors, sizes))
    print(f"{against} against PyTorch (eval mode, batch 2): largest relative difference {shown}")
