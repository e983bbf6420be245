"""Classification inference without the trainer, for ``predict``, ``validate``, ``erf`` and ``cam``.

A model is loaded from a timm name (with an optional weights file: official or any timm-loadable checkpoint) or
from a checkpoint of an ``overlock train`` run, whose saved configuration rebuilds the model without the
training loop. The loaded model comes with its class names, the class each output's folder holds, and the
input transform it was trained for. :func:`prepare_for_inference` is the one place where a loaded model is
made ready for inference.
"""
from __future__ import annotations

import logging
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
from PIL import Image, UnidentifiedImageError
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import Tensor, nn

import overlock  # noqa: F401  (registers the models)

from ..data import ClassFolderError, FashionMNISTTransform
from ..data.class_folders import class_folders, classes_from_folders
from ..data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..engine.checkpoint import CheckpointError, read_run_file
from ..models import OverLoCK, optimize_for_inference
from .config import TrainConfig
from .models import build_model

_logger = logging.getLogger(__name__)

ROBUSTNESS_SETS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


@dataclass
class LoadedModel:
    """A model in eval mode with what inference needs to feed it and to name its outputs.

    ``classes``: the name of each output, when known (an ``overlock train`` run's class names; ImageNet's
    descriptions for a 1000-class timm model). ``folder_classes``: the class that each output's image folder
    holds (the run's class names; ImageNet's WordNet ids). ``transform``: PIL image to the input tensor.
    ``mean``/``std``: the normalisation the transform applies, one value per input channel. ``run``: for a checkpoint
    of an ``overlock train`` run, what it holds besides the weights (configuration, classes, epoch, accuracy).
    """

    model: nn.Module
    name: str
    transform: Callable[[Image.Image], Tensor]
    classes: list[str] | None
    folder_classes: list[str] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    run: dict[str, Any] | None = None

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def label(self, index: int) -> str:
        """The name of output ``index``, or the index itself when the model's class names are unknown."""
        if self.classes is not None and index < len(self.classes):
            return self.classes[index]
        return str(index)


def prepare_for_inference(model: nn.Module, autocast: bool = False) -> nn.Module:
    """Make a loaded model ready for inference, on the device it is on: the single step ``predict`` and
    ``validate`` apply after loading. An OverLoCK model is converted by ``optimize_for_inference`` (only the
    dtype-independent passes when it will run under ``autocast``); any other model is put in eval mode."""
    if not isinstance(model, OverLoCK):
        return model.eval()
    passes = ("fold", "inplace_norms") if autocast else None
    return optimize_for_inference(model, passes, inplace=True)


def read_run_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The contents of ``path`` when it is a checkpoint of an ``overlock train`` run (model weights with the
    run's configuration; ``.pth`` or ``.safetensors``), else None. Read as weights only: no code in the file runs,
    and a file that would run code is refused with a ``CheckpointError`` naming it."""
    state = read_run_file(path)
    if isinstance(state, dict) and "config" in state and "model" in state:
        return state
    return None


def eval_transform(model: nn.Module | None, img_size: int | None = None, crop_pct: float | None = None) -> Callable:
    """Evaluation transform for RGB images with the model's crop_pct, interpolation, mean and std (timm's
    data config), at ``img_size`` when given."""
    return create_transform(**_data_config(model, img_size, crop_pct))


def _data_config(model: nn.Module | None, img_size: int | None, crop_pct: float | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if img_size:
        overrides["input_size"] = (3, img_size, img_size)
    if crop_pct:
        overrides["crop_pct"] = crop_pct
    return resolve_data_config(overrides, model=model)


def load_model(
    name: str | None, weights: str | None = None, img_size: int | None = None, crop_pct: float | None = None
) -> LoadedModel:
    """A model in eval mode with its classes and transform (at ``img_size`` and ``crop_pct`` when given).

    ``weights`` may be an official checkpoint, any timm-loadable file, or ``best.pth``/``ema.pth``/``last.pth``
    of an ``overlock train`` run, which rebuilds the run's model (``name`` may then be omitted).
    Raises ``FileNotFoundError``, ``ValueError`` or ``CheckpointError`` with a one-line message on bad input.
    """
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {weights}")
    run = read_run_checkpoint(weights) if weights else None
    if run is not None:
        return _load_run(run, weights, name, img_size, crop_pct)
    if not name:
        raise ValueError("a model name is needed unless --weights is a checkpoint of an overlock train run")
    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}; OverLoCK models: {', '.join(timm.list_models('*overlock*'))}")
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights)) if weights else {}
    model = timm.create_model(name, **kwargs).eval()
    classes = folders = None
    if model.num_classes == 1000:  # a 1000-class timm model: ImageNet-1k's classes in timm's order
        info = ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(1000)]
        folders = list(info.label_names())
    data_cfg = _data_config(model, img_size, crop_pct)
    return LoadedModel(model, name, create_transform(**data_cfg), classes, folders, tuple(data_cfg["mean"]),
                       tuple(data_cfg["std"]))


def _load_run(
    run: dict[str, Any], path: str, name: str | None, img_size: int | None, crop_pct: float | None
) -> LoadedModel:
    """Rebuild a run's model from its saved configuration and load its weights."""
    try:
        cfg = TrainConfig(**run["config"])
    except TypeError as exc:
        raise CheckpointError(f"{path} holds a run configuration this version cannot read: {exc}") from exc
    if name and name != cfg.model:
        raise ValueError(f"{path} is a run of {cfg.model!r}, not {name!r}: leave out the model name or pass the "
                         f"run's model")
    classes = [str(c) for c in run["classes"]] if run.get("classes") else None
    num_classes = cfg.num_classes or (len(classes) if classes else 0)
    if not num_classes:
        raise CheckpointError(f"{path} names neither the run's classes nor their number")
    model = build_model(cfg.updated(pretrained=None, drop_path=0.0), num_classes, cfg.in_chans)
    try:
        model.load_state_dict(run["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the run's model: {str(exc).splitlines()[0]}") from exc
    model.eval()
    size = img_size or cfg.img_size
    info = {key: value for key, value in run.items() if key != "model"}
    if cfg.dataset == "fashion_mnist":
        if crop_pct:
            raise ValueError("--crop-pct does not apply to a Fashion-MNIST run (its images are scaled and padded)")
        return LoadedModel(model, cfg.model, FashionMNISTTransform(size), classes, classes, (FASHION_MNIST_MEAN,),
                           (FASHION_MNIST_STD,), info)
    data_cfg = _data_config(model, size, crop_pct)
    return LoadedModel(model, cfg.model, create_transform(**data_cfg), classes, classes, tuple(data_cfg["mean"]),
                       tuple(data_cfg["std"]), info)


def load_image(path: str | Path, transform: Callable[[Image.Image], Tensor]) -> Tensor:
    """The image file at ``path`` (any format Pillow reads, as RGB) through ``transform``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return transform(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


@dataclass
class SetClasses:
    """How a validation set's class folders are scored: ``names[i]`` is the class of target ``i`` (folders are
    matched to these names), ``outputs[i]`` the model output it is scored against (None: output ``i``; a list
    restricts the logits to those outputs, as ImageNet-A and -R do)."""

    names: list[str]
    outputs: list[int] | None = None


def imagenet_subset(set_name: str) -> list[str]:
    """The WordNet ids of the 200 classes of ImageNet-A or -R, sorted (the order of their folders), from the
    synset lists timm ships."""
    data = pkgutil.get_data("timm.data", f"_info/imagenet_{set_name[-1]}_synsets.txt")
    return sorted(data.decode().split())


def set_classes(set_name: str, loaded: LoadedModel, root: str | Path) -> SetClasses:
    """The classes that the folders of the set ``set_name`` ('val' or one of :data:`ROBUSTNESS_SETS`) at ``root``
    are matched to, by name: the model's own class folders for 'val' and ImageNet-Sketch, the numbers 0-999
    (ImageNet's output indices) for ImageNet-V2, and the 200 WordNet ids of ImageNet-A/-R, scored on those
    outputs only."""
    known = loaded.folder_classes
    if set_name == "val":
        return SetClasses(known) if known is not None else _unnamed_model_classes(loaded, Path(root))
    wnids = list(ImageNetInfo().label_names())
    if set_name == "imagenet-v2":
        if known != wnids:
            raise ClassFolderError(f"{set_name}: its folders 0-999 are ImageNet-1k output indices, but this model's "
                                   f"outputs are not ImageNet-1k's 1000 classes in timm's order")
        return SetClasses([str(i) for i in range(1000)])
    if known is None or not set(wnids) & set(known):
        raise ClassFolderError(f"{set_name}: its folders are ImageNet WordNet ids, but this model's classes are not "
                               f"ImageNet's (its class folders: {', '.join((known or ['unknown'])[:5])}, ...)")
    if set_name == "imagenet-sketch":
        return SetClasses(list(known))
    if set_name not in ("imagenet-a", "imagenet-r"):
        raise ValueError(f"unknown set {set_name!r}; sets: val, {', '.join(ROBUSTNESS_SETS)}")
    wanted = imagenet_subset(set_name)
    position = {name: i for i, name in enumerate(known)}
    missing = [s for s in wanted if s not in position]
    if missing:
        raise ClassFolderError(f"{set_name}: the model has no output for {len(missing)} of the set's 200 classes "
                               f"({', '.join(missing[:5])}, ...)")
    return SetClasses(wanted, [position[s] for s in wanted])


def _unnamed_model_classes(loaded: LoadedModel, root: Path) -> SetClasses:
    """A model without class names can only be scored when the set has a folder for each of its outputs: the
    folders in order (as numbers when all are numbers) then stand for outputs 0, 1, ..."""
    folders = class_folders(root) if root.is_dir() else []
    if len(folders) != loaded.num_classes:
        raise ClassFolderError(
            f"{root}: the model does not name its classes, so its {loaded.num_classes} outputs can only be matched "
            f"to a set with exactly that many class folders, in order; this one has {len(folders)}"
        )
    _logger.warning("%s: the model does not name its classes; scoring the %d class folders, in order, as its "
                    "outputs 0-%d", root, len(folders), len(folders) - 1)
    return SetClasses(classes_from_folders(folders, str(root)))
