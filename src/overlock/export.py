"""Models out: a timm / Hugging Face model folder, an ONNX file, a ``torch.export`` program.

- :func:`write_model_folder`: ``config.json`` (timm's pretrained configuration with the model's arguments, input
  size, normalisation and class names), ``model.safetensors`` and a ``README.md`` model card, the layout the
  Hugging Face Hub expects: ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it after
  ``import overlock``, and ``huggingface_hub.upload_folder(repo_id=..., folder_path=DIR)`` publishes it as it is.
- :func:`export_onnx`: the deploy form (``reparameterize()``) as ONNX with standard operators only
  (``overlock.ops.onnx``), for any batch size and image size.
- :func:`export_program`: the deploy form as a ``torch.export`` program (``.pt2``) for any batch and image size;
  ``torch.export.load`` reloads it after ``import overlock`` (which registers the custom ops it calls).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config
from torch import nn

from .analysis import count_macs, count_params
from .classification.inference import LoadedModel
from .layers.fused import InferenceModule
from .models import MODEL_ARGS, OverLoCK, checkpoint_filter_fn, unwrap_state_dict
from .classification.config import TrainConfig
from .weights_file import read_checkpoint

__all__ = [
    "DYNAMIC_MIN_SIZE",
    "FORMATS",
    "ModelSource",
    "compare_onnx",
    "compare_program",
    "convert_official",
    "deploy_form",
    "dense_backbone",
    "export_onnx",
    "export_program",
    "classifier_weights",
    "identify_official_checkpoint",
    "model_card",
    "source_from_loaded",
    "write_model_folder",
]

_logger = logging.getLogger(__name__)

FORMATS = ("timm", "onnx", "pt2")
DYNAMIC_MIN_SIZE = 33  # smallest image side of the exported programs: every stride-32 map at least 2 x 2
ONNX_OPSET = 18

CITATION = """@inproceedings{lou2025overlock,
  title     = {OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels},
  author    = {Lou, Meng and Yu, Yizhou},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}"""


@dataclass
class ModelSource:
    """A model to export with what describes it: its timm ``architecture`` and the ``model_args`` that rebuild it,
    its input (``data_config``: input size, interpolation, crop, mean, std), its class names, where its weights
    come from, and the figures of the training run that made them (``run``: epoch and accuracy of the
    checkpoint; ``summary``: the run's summary.json, when beside the checkpoint)."""

    model: nn.Module
    architecture: str
    model_args: dict[str, Any]
    data_config: dict[str, Any]
    origin: str
    label_names: list[str] | None = None
    label_descriptions: dict[str, str] | None = None
    run: dict[str, Any] | None = None
    summary: dict[str, Any] | None = field(default=None, repr=False)


def source_from_loaded(loaded: LoadedModel, weights: str | None) -> ModelSource:
    """The export description of a model loaded by ``overlock.classification.inference.load_model`` from ``weights``."""
    model = loaded.model
    if loaded.run is not None:
        cfg = TrainConfig(**loaded.run["config"])
        args = dict(cfg.model_kwargs, num_classes=model.num_classes, in_chans=cfg.in_chans)
        size = (cfg.in_chans, cfg.img_size, cfg.img_size)
        data = _data_config(model, size, loaded.mean, loaded.std)
        if cfg.dataset == "fashion_mnist":  # scaled to 7/8 of the input and padded, not cropped
            data.update(crop_pct=1.0, interpolation="bilinear")
        summary_file = Path(weights).parent / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        return ModelSource(model, cfg.model, args, data, f"`overlock train` run checkpoint `{Path(weights).name}`",
                           loaded.classes, None, loaded.run, summary)
    data = _data_config(model, None, loaded.mean, loaded.std)
    origin = f"checkpoint `{Path(weights).name}`" if weights else "initial (untrained) weights"
    source = ModelSource(model, loaded.name, {}, data, origin)  # load_model builds the name's default model
    if model.num_classes == 1000 and loaded.folder_classes is not None:
        source.label_names, source.label_descriptions = _imagenet_labels()
    return source


def _imagenet_labels() -> tuple[list[str], dict[str, str]]:
    """ImageNet-1k's WordNet ids in timm's output order, and their descriptions."""
    info = ImageNetInfo()
    names = list(info.label_names())
    return names, {wnid: info.index_to_description(i) for i, wnid in enumerate(names)}


def _data_config(model: nn.Module, input_size: Sequence[int] | None, mean: Sequence[float],
                 std: Sequence[float]) -> dict[str, Any]:
    overrides = {"input_size": tuple(input_size)} if input_size else {}
    data = resolve_data_config(overrides, model=model)
    return dict(input_size=tuple(data["input_size"]), interpolation=data["interpolation"], crop_pct=data["crop_pct"],
                crop_mode=data.get("crop_mode", "center"), mean=tuple(mean), std=tuple(std))


def classifier_weights(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The weights of an OverLoCK classification checkpoint, whatever its wrapper; ``ValueError`` for another kind."""
    state = unwrap_state_dict(checkpoint) if isinstance(checkpoint, dict) else {}
    if "head.4.weight" not in state:
        raise ValueError("not an OverLoCK classification checkpoint (no main head 'head.4.weight'); dense-backbone "
                         "checkpoints load with timm.create_model(..., features_only=True)")
    return state


def identify_official_checkpoint(state: dict[str, torch.Tensor]) -> str:
    """The OverLoCK variant (training or ``_reparam`` form) that a classification state dict's keys describe: the
    blocks per stage and the widths pick the variant, the Dilated RepConv branches the form. ``ValueError`` when
    none fits (loading then checks every key and shape)."""
    def blocks(prefix: str) -> int:
        return len({key.split(".")[1] for key in state if key.startswith(f"{prefix}.")})

    def width(stage: int) -> int:
        key = f"blocks{stage}.0.dwconv.weight"
        return state[key].shape[0] if key in state else 0

    found = dict(depths=tuple(blocks(f"blocks{i}") for i in range(1, 5)),
                 sub_depths=(blocks("sub_blocks3"), blocks("sub_blocks4")),
                 embed_dims=tuple(width(i) for i in range(1, 5)))
    for variant, args in MODEL_ARGS.items():
        if all(tuple(args[key]) == value for key, value in found.items()):
            deploy = not any(".origin_bn." in key for key in state)
            return f"{variant}_reparam" if deploy else variant
    raise ValueError(f"the checkpoint fits none of the OverLoCK variants (its blocks per stage {found['depths']}, "
                     f"Focus-Net blocks {found['sub_depths']}, widths {found['embed_dims']}); name it with --model")


def deploy_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every re-parameterisable block merged (``reparameterize()``) and
    without the auxiliary head, which inference does not use. Models converted by ``optimize_for_inference`` are
    refused: their CPU inference kernels have no portable form."""
    if any(isinstance(m, InferenceModule) for m in model.modules()):
        raise ValueError("this model was converted by optimize_for_inference, whose CPU kernels do not export: "
                         "export the plain model")
    deployed = timm.utils.reparameterize_model(copy.deepcopy(model).eval())
    for module in deployed.modules():
        if isinstance(module, OverLoCK) and module.aux_head is not None:
            module.aux_head = None
    return deployed.requires_grad_(False)


def _example_and_shapes(model: nn.Module, input_size: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """An example batch and the dynamic shapes that make batch, height and width free (the example's own sizes
    are no constraint)."""
    from torch.export import Dim

    channels, height, width = input_size
    size = (max(height, 2 * DYNAMIC_MIN_SIZE), max(width, 2 * DYNAMIC_MIN_SIZE))
    reference = next(model.parameters())
    example = torch.randn(2, channels, *size, dtype=reference.dtype, device=reference.device)
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=DYNAMIC_MIN_SIZE), 3: Dim("width", min=DYNAMIC_MIN_SIZE)}
    return example, {"x": dims}


def export_program(model: nn.Module, path: str | Path, input_size: Sequence[int] = (3, 224, 224)) -> Path:
    """The deploy form of ``model`` as a ``torch.export`` program for any batch size and image size (of at least
    ``DYNAMIC_MIN_SIZE``), saved to ``path`` (``.pt2``)."""
    deployed = deploy_form(model)
    example, shapes = _example_and_shapes(deployed, input_size)
    program = torch.export.export(deployed, (example,), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return Path(path)


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int] = (3, 224, 224),
                opset: int = ONNX_OPSET) -> Path:
    """The deploy form of ``model`` as an ONNX file of standard operators (opset ``opset``, at least 18) for any
    batch size and image size (of at least ``DYNAMIC_MIN_SIZE``). Input ``images``; output ``logits``, or
    ``level0``-``level3`` for a dense backbone. Needs onnx and onnxscript (``pip install overlock[export]``)."""
    if opset < ONNX_OPSET:
        raise ValueError(f"ONNX opset {opset} is too old: the export needs {ONNX_OPSET} or newer")
    try:
        from .ops.onnx import onnx_translations
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'overlock[export]' ({exc})") from exc
    deployed = deploy_form(model)
    example, shapes = _example_and_shapes(deployed, input_size)
    with torch.no_grad():
        outputs = deployed(example)
    names = [f"level{i}" for i in range(len(outputs))] if isinstance(outputs, (list, tuple)) else ["logits"]
    program = torch.onnx.export(
        deployed, (example,), dynamo=True, opset_version=opset, dynamic_shapes=shapes, input_names=["images"],
        output_names=names, custom_translation_table=onnx_translations(), verbose=False,
    )
    program.save(str(path))
    return Path(path)


def write_model_folder(source: ModelSource, folder: str | Path) -> Path:
    """``config.json``, ``model.safetensors`` and a ``README.md`` model card in ``folder``: what
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads and the Hugging Face Hub shows."""
    from timm.models import save_for_hf

    folder = Path(folder)
    config: dict[str, Any] = {}
    if source.label_names:
        config["label_names"] = list(source.label_names)
    if source.label_descriptions:
        config["label_descriptions"] = dict(source.label_descriptions)
    model = copy.deepcopy(source.model).to("cpu", memory_format=torch.contiguous_format)
    save_for_hf(model, str(folder), model_config=config, model_args=dict(source.model_args),
                safe_serialization=True, data_config=dict(source.data_config))
    (folder / "README.md").write_text(model_card(source), encoding="utf-8")
    return folder


def model_card(source: ModelSource) -> str:
    """The README.md of a model folder: YAML metadata for the Hub, then architecture, size, cost, input, the
    training run's figures when known, usage, licence and citation."""
    model = source.model
    size = tuple(source.data_config["input_size"])
    params = count_params(model) / 1e6
    deployed = deploy_form(model) if isinstance(_overlock(model), OverLoCK) else model
    deploy_params = count_params(deployed) / 1e6
    macs = count_macs(deployed, size)
    classes = getattr(model, "num_classes", 0)
    lines = [
        "---",
        "library_name: timm",
        "license: apache-2.0",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- timm",
        "- overlock",
        "---",
        "",
        f"# {source.architecture}",
        "",
        f"An OverLoCK image classifier (Lou & Yu, CVPR 2025) for [timm](https://github.com/huggingface/"
        f"pytorch-image-models), written by the `overlock` package from the {source.origin}."
        if isinstance(_overlock(model), OverLoCK) else
        f"A timm `{source.architecture}` image classifier, written by the `overlock` package from the {source.origin}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{source.architecture}`{_architecture_details(model)} |",
        f"| parameters | {params:.2f} M in this folder; {deploy_params:.2f} M for inference (deploy form"
        f"{', without the auxiliary head' if deploy_params != params else ''}) |",
        f"| MACs | {_count_text(macs)} at {size[1]}x{size[2]} (`overlock.analysis.count_macs`) |",
        f"| input | {size[0]}x{size[1]}x{size[2]}, {source.data_config['interpolation']} interpolation, crop "
        f"{source.data_config['crop_pct']}, mean {_numbers(source.data_config['mean'])}, std "
        f"{_numbers(source.data_config['std'])} |",
        f"| classes | {classes}{' (names in config.json)' if source.label_names else ''} |",
        f"| model arguments | `{json.dumps(source.model_args)}` |",
        "",
    ]
    lines += _run_section(source)
    repo = source.architecture
    lines += [
        "## Use",
        "",
        "```python",
        "import timm",
        "import overlock  # registers the OverLoCK models in timm",
        "",
        f'model = timm.create_model("hf-hub:YOUR_NAME/{repo}", pretrained=True).eval()  # or "local-dir:PATH"',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "```",
        "",
        "Publish this folder as it is with `huggingface_hub.upload_folder(repo_id=\"YOUR_NAME/"
        f"{repo}\", folder_path=\"THIS_FOLDER\")`. For deployment, `overlock export DIR --format onnx` and "
        "`--format pt2` write the deploy form as ONNX or a `torch.export` program.",
        "",
        "## Licence",
        "",
        "Apache-2.0, as the official OverLoCK implementation (github.com/LMMMEng/OverLoCK).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def _overlock(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, OverLoCK)), None)


def _architecture_details(model: nn.Module) -> str:
    network = _overlock(model)
    if network is None:
        return ""
    depths = [len(getattr(network, f"blocks{i}")) for i in range(1, 5)]
    focus = ("no Focus-Net" if network.sub_blocks3 is None or network.sub_blocks4 is None  # hierarchical ablations
             else f"Focus-Net depths {[len(network.sub_blocks3), len(network.sub_blocks4)]}")
    return (f": Base-Net/Overview-Net depths {depths}, {focus}, widths {list(network.embed_dims)}"
            f"{', deploy form' if not any(hasattr(m, 'origin_bn') for m in network.modules()) else ''}")


def _count_text(count: int) -> str:
    return f"{count / 1e9:.2f} G" if count >= 1e9 else f"{count / 1e6:.2f} M"


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _run_section(source: ModelSource) -> list[str]:
    """The training run's figures: the checkpoint's epoch and accuracy, and the run's summary when known."""
    if source.run is None:
        return []
    cfg = source.run.get("config", {})
    lines = ["## Training run", "", "| | |", "|---|---|"]
    lines.append(f"| data | {cfg.get('dataset')} {cfg.get('data_dir') or ''} at {cfg.get('img_size')} px |")
    lines.append(f"| recipe | {cfg.get('epochs')} epochs of batch {cfg.get('batch_size')}, {cfg.get('opt')}, lr "
                 f"{cfg.get('lr') or cfg.get('base_lr')} |")
    if "epoch" in source.run:
        top1 = source.run.get("top1", 0)
        lines.append(f"| this checkpoint | epoch {source.run['epoch']}, validation top-1 {top1:.2f} % |")
    final = (source.summary or {}).get("final") or {}
    if final:
        lines.append(f"| end of the run | {source.summary.get('epochs')} epochs, {source.summary.get('steps')} steps, "
                     f"top-1 {final.get('top1', 0):.2f} %, top-5 {final.get('top5', 0):.2f} %, "
                     f"{source.summary.get('train_seconds')} s |")
    return lines + [""]


def dense_backbone(source: ModelSource, weights: str | None) -> nn.Module:
    """The dense backbone (``features_only=True``: the four-level pyramid) of ``source``'s architecture, with the
    backbone part of ``weights`` (a classification checkpoint's, the dense modules keeping their initial values, or
    a detection/segmentation checkpoint's)."""
    args = {key: value for key, value in source.model_args.items() if key != "num_classes"}
    if weights:
        args.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    return timm.create_model(source.architecture, features_only=True, **args).eval()


def export_config(source: ModelSource, format: str, outputs: Sequence[str]) -> dict[str, Any]:
    """What a program in ``format`` needs beside it: its input (size, normalisation), the sizes it takes, its
    outputs and the class names."""
    config = dict(
        architecture=source.architecture, model_args=source.model_args, format=format, input_name="images",
        output_names=list(outputs), dynamic_axes=dict(batch=">= 1", height=f">= {DYNAMIC_MIN_SIZE}",
                                                     width=f">= {DYNAMIC_MIN_SIZE}"),
        **{key: list(value) if isinstance(value, tuple) else value for key, value in source.data_config.items()},
    )
    if source.label_names:
        config["label_names"] = list(source.label_names)
    return config


def check_sizes(input_size: Sequence[int]) -> list[tuple[int, int, int]]:
    """Two input sizes to compare an exported program on: the model's own, and a non-square one."""
    channels, height, width = input_size
    other = (max(DYNAMIC_MIN_SIZE, height * 3 // 4), max(DYNAMIC_MIN_SIZE + 7, width + 32))
    return [(channels, max(height, DYNAMIC_MIN_SIZE), max(width, DYNAMIC_MIN_SIZE)), (channels, *other)]


def relative_error(actual: Any, expected: Any) -> float:
    """Largest absolute difference over the largest magnitude of ``expected`` (over every output)."""
    pairs = zip(actual, expected) if isinstance(expected, (list, tuple)) else [(actual, expected)]
    worst = 0.0
    for a, e in pairs:
        a, e = torch.as_tensor(a).double(), torch.as_tensor(e).double()
        worst = max(worst, ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item())
    return worst


def compare_onnx(model: nn.Module, path: str | Path, sizes: Sequence[Sequence[int]], batch: int = 2) -> list[float]:
    """Relative error of ONNX Runtime (CPU) running ``path`` against ``model`` in PyTorch, per input size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errors = []
    for size in sizes:
        x = torch.randn(batch, *size)
        with torch.no_grad():
            expected = model.eval()(x)
        outputs = session.run(None, {"images": x.numpy()})
        errors.append(relative_error(outputs if isinstance(expected, (list, tuple)) else outputs[0], expected))
    return errors


def compare_program(model: nn.Module, path: str | Path, sizes: Sequence[Sequence[int]], batch: int = 2) -> list[float]:
    """Relative error of the reloaded ``torch.export`` program at ``path`` against ``model``, per input size."""
    program = torch.export.load(str(path)).module()
    errors = []
    for size in sizes:
        x = torch.randn(batch, *size)
        with torch.no_grad():
            errors.append(relative_error(program(x), model.eval()(x)))
    return errors


def convert_official(checkpoint_file: str | Path, folder: str | Path, name: str | None = None) -> ModelSource:
    """An official classification checkpoint (any wrapper, training or re-parameterised form) as a model folder
    (:func:`write_model_folder`). The variant is recognised from the keys unless ``name`` is given; every key and
    shape is then checked as the weights load."""
    state = classifier_weights(read_checkpoint(checkpoint_file))
    found = name or identify_official_checkpoint(state)
    if found not in timm.list_models("*overlock*"):
        raise ValueError(f"{found!r} is not a registered OverLoCK model ({', '.join(timm.list_models('*overlock*'))})")
    num_classes = state["head.4.weight"].shape[0]
    model = timm.create_model(found, num_classes=num_classes)
    model.load_state_dict(checkpoint_filter_fn(state, model))  # every key and shape checked
    model.eval()
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    source = ModelSource(model, found, {} if num_classes == 1000 else {"num_classes": num_classes},
                         _data_config(model, None, mean, std), f"official checkpoint `{Path(checkpoint_file).name}`")
    if num_classes == 1000:
        source.label_names, source.label_descriptions = _imagenet_labels()
    write_model_folder(source, folder)
    return source
