"""Detection inference for the command line: loading a detector checkpoint, predicting images, drawing results.

A checkpoint is either an official mmdet one (Mask R-CNN / Cascade Mask R-CNN on OverLoCK-T/S/B, recognised from
its keys; COCO's 80 classes) or a ``overlock det train`` run's ``best.pth`` / ``last.pth`` (its configuration,
class names and category ids travel with it). Files are read weights-only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from ..weights_file import read_checkpoint
from .data import EvalPipeline, Instances, read_image, to_sample
from .detectors import MaskRCNN, TestConfig, load_detector_weights, load_official_detector
from .presets import DetTrainConfig, build_detector

COCO_CATEGORY_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
                     *range(72, 83), *range(84, 91))
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass
class LoadedDetector:
    model: MaskRCNN
    classes: list[str]
    category_ids: list[int]
    test_scale: tuple[int, int]
    description: str


def load_detector(path: str | Path, test_cfg: TestConfig | None = None) -> LoadedDetector:
    """The detector of a checkpoint file: a run's (``config`` + ``model``) or an official mmdet one."""
    checkpoint = read_checkpoint(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict) and "model" in checkpoint:
        try:
            cfg = DetTrainConfig(**checkpoint["config"]).updated(pretrained=None, weights=None, drop_path=0.0)
        except TypeError as exc:
            raise ValueError(f"{path} is not a detection run's checkpoint: {exc}") from None
        classes = list(checkpoint["classes"])
        model = build_detector(cfg, len(classes), test_cfg)
        load_detector_weights(model, checkpoint["model"], path)
        ids = list(checkpoint.get("category_ids") or range(1, len(classes) + 1))
        kind = "Cascade Mask R-CNN" if cfg.cascade else "Mask R-CNN"
        return LoadedDetector(model, classes, ids, tuple(cfg.test_scale), f"{kind} {cfg.backbone} run checkpoint")
    model = load_official_detector(checkpoint, test_cfg)
    if model.num_classes != len(COCO_CLASSES):
        classes = [f"class {i}" for i in range(model.num_classes)]
        ids = list(range(1, model.num_classes + 1))
    else:
        classes, ids = list(COCO_CLASSES), list(COCO_CATEGORY_IDS)
    kind = "Cascade Mask R-CNN" if type(model).__name__.startswith("Cascade") else "Mask R-CNN"
    return LoadedDetector(model, classes, ids, (1333, 800), f"official {kind} checkpoint")


@torch.no_grad()
def predict_image(loaded: LoadedDetector, path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[np.ndarray, dict[str, Tensor]]:
    """(the RGB image, its detections in original pixels) through the official test pipeline."""
    image = read_image(Path(path))
    inst = Instances(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                     np.zeros((0, *image.shape[:2]), np.uint8), np.zeros((0, 4), np.float32))
    sample = to_sample(EvalPipeline(loaded.test_scale)(inst), {"ori_shape": image.shape})
    loaded.model.eval()
    (result,) = loaded.model.detect(sample.image[None].to(device), [sample.meta], rescale=True)
    return image, {k: v.cpu() for k, v in result.items()}


def _colour(label: int) -> tuple[int, int, int]:
    hue = (label * 47) % 180
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_detections(image: np.ndarray, detections: dict[str, Tensor], classes: Sequence[str],
                    score_threshold: float = 0.3) -> np.ndarray:
    """The RGB image with each detection scoring at least ``score_threshold``: its mask tinted, its box and
    ``class score`` written above it, in the class's colour."""
    canvas = image.copy()
    keep = detections["scores"] >= score_threshold
    masks = detections.get("masks")
    for index in torch.nonzero(keep).flatten().tolist():
        label = int(detections["labels"][index])
        colour = np.array(_colour(label), dtype=np.float32)
        if masks is not None:
            region = masks[index].numpy().astype(bool)
            canvas[region] = (0.5 * canvas[region] + 0.5 * colour).astype(np.uint8)
        x1, y1, x2, y2 = (round(v) for v in detections["boxes"][index].tolist())
        cv2.rectangle(canvas, (x1, y1), (x2, y2), tuple(int(c) for c in colour), 2)
        text = f"{classes[label]} {float(detections['scores'][index]):.2f}"
        cv2.putText(canvas, text, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, tuple(int(c) for c in colour),
                    1, cv2.LINE_AA)
    return canvas


def write_png(path: str | Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
