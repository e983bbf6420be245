"""See what a model does: effective receptive fields and class-activation maps, in the published forms.

Effective receptive field (ERF), by the method of RepLKNet (Ding et al., CVPR 2022; its ``erf/visualize_erf.py``
and ``erf/analyze_erf.py``), which the OverLoCK paper follows:

- one image's contribution map: the score is the sum over channels of the ReLU of the centre pixel ``(h // 2,
  w // 2)`` of a stage's feature map; its gradient with respect to the input image, ReLU'd (only positive
  contributions) and summed over the colour channels, is the map (:func:`contribution_map`);
- the maps are averaged over images, an image whose gradient is not finite being left out
  (:func:`effective_receptive_field`);
- the mean map is shown and measured as ``log10(1 + map)`` scaled to a maximum of 1 (:func:`erf_log_scaled`);
- the high-contribution area ratio at threshold ``t`` is the area, over the input's, of the smallest centred square
  (side 3, 5, ...) whose share of that log-scaled map's total exceeds ``t`` (:func:`high_contribution_area`), at
  :data:`ERF_THRESHOLDS`.

Grad-CAM (Selvaraju et al., 2017) as in the OverLoCK paper's Figure 2: for each classifier head, the maps of
stages 3 and 4 (:func:`grad_cam_panels`); for OverLoCK the Overview-Net's auxiliary head (on the Base-Net's
stage 3 and the Overview-Net's output) beside the main Focus-Net head (on the Focus-Net's two stages).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import OverLoCK
from .models.overlock import check_image_batch

_logger = logging.getLogger(__name__)

ERF_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
CAM_STAGES = (3, 4)


def stage_index(model: nn.Module, stage: int) -> int:
    """The index in ``model.feature_info`` of stage ``stage`` (1-4): its last feature level at stride
    ``2 ** (stage + 1)`` (4, 8, 16, 32), so that a ResNet's stride-2 stem level and a ViT's blocks count as well."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} does not list its feature levels (timm's feature_info)")
    strides = [level["reduction"] for level in info]
    wanted = 2 ** (stage + 1)
    matches = [i for i, stride in enumerate(strides) if stride == wanted]
    if not matches:
        raise ValueError(f"the model has no stage {stage} (stride {wanted}); its feature levels have strides "
                         f"{', '.join(str(s) for s in sorted(set(strides)))}")
    return matches[-1]


def stage_features(model: nn.Module, stage: int) -> Callable[[Tensor], Tensor]:
    """A function returning the (B, C, h, w) output of stage ``stage`` (1-4) of a timm model."""
    index = stage_index(model, stage)

    def features(x: Tensor) -> Tensor:
        return model.forward_intermediates(x, indices=[index], intermediates_only=True)[0]

    return features


def contribution_map(feature_fn: Callable[[Tensor], Tensor], image: Tensor) -> Tensor:
    """(H, W) contribution of each input pixel of ``image`` (C, H, W) to the centre of ``feature_fn``'s output:
    the input gradient of the summed ReLU'd centre pixel, ReLU'd and summed over the colour channels."""
    x = image[None].detach().clone().requires_grad_(True)
    with torch.enable_grad():  # the graph is needed whatever the caller's mode and the parameters' requires_grad
        feats = feature_fn(x)
        h, w = feats.shape[-2:]
        score = F.relu(feats[:, :, h // 2, w // 2]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return F.relu(grad).sum(dim=(0, 1))


def effective_receptive_field(
    feature_fn: Callable[[Tensor], Tensor], images: Iterable[Tensor], num_images: int | None = None
) -> tuple[Tensor, int]:
    """The mean contribution map (H, W, float64) over the first ``num_images`` images (all when None) whose
    gradient is finite, and the number of images averaged. Raises ``ValueError`` when there is none."""
    total: Tensor | None = None
    count = skipped = 0
    for image in images:
        if num_images is not None and count == num_images:
            break
        scores = contribution_map(feature_fn, image).double()
        if not torch.isfinite(scores).all():
            skipped += 1
            continue
        total = scores if total is None else total + scores
        count += 1
    if skipped:
        _logger.warning("left out %d image(s) whose gradient was not finite", skipped)
    if total is None:
        raise ValueError("no image gave a finite gradient" if skipped else "no images to measure the ERF on")
    return total / count, count


def erf_log_scaled(erf: Tensor) -> Tensor:
    """RepLKNet's view of a mean contribution map: ``log10(1 + erf)`` divided by its maximum (all zero stays zero)."""
    scaled = torch.log10(erf + 1)
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def high_contribution_area(scores: Tensor, threshold: float) -> tuple[int, float] | None:
    """The side and area ratio (side / H * side / W) of the smallest centred square of side 3, 5, ... whose
    share of the total of ``scores`` (H, W) exceeds ``threshold``; None when no square narrower than the map does.
    The square is centred on ``(H // 2, W // 2)``, the pixel the feature map's centre sits on."""
    h, w = scores.shape
    total = float(scores.sum())
    if not total > 0:
        return None
    for half in range(1, h // 2):
        window = scores[h // 2 - half : h // 2 + half + 1, w // 2 - half : w // 2 + half + 1]
        if float(window.sum()) / total > threshold:
            side = 2 * half + 1
            return side, side / h * side / w
    return None


def erf_area_ratios(erf: Tensor, thresholds: Sequence[float] = ERF_THRESHOLDS) -> dict[float, float | None]:
    """High-contribution area ratio of a mean contribution map at each threshold, measured on its log-scaled
    view as RepLKNet's tables are (None where no centred square narrower than the input reaches the threshold)."""
    scaled = erf_log_scaled(erf)
    ratios: dict[float, float | None] = {}
    for threshold in thresholds:
        found = high_contribution_area(scaled, threshold)
        ratios[threshold] = None if found is None else found[1]
    return ratios


def grad_cam_maps(score: Tensor, features: Sequence[Tensor], size: Sequence[int]) -> list[Tensor]:
    """Grad-CAM of the scalar ``score`` for each (1, C, h, w) feature map it was computed from: the channels
    weighted by the spatial mean of the score's gradient, summed, ReLU'd, bilinearly resized to ``size`` (H, W)
    and divided by the maximum (an all-zero map stays zero)."""
    grads = torch.autograd.grad(score, list(features), retain_graph=True, allow_unused=True)
    maps = []
    for feats, grad in zip(features, grads):
        if grad is None:
            raise ValueError("the class score does not depend on one of the feature maps asked for")
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
        maps.append((cam / cam.max().clamp_min(torch.finfo(cam.dtype).tiny)).detach())
    return maps


@dataclass
class HeadActivations:
    """A classifier head's logits (1, classes) and the stage maps they were computed from, by stage number."""

    name: str
    logits: Tensor
    stages: dict[int, Tensor]


def head_activations(model: nn.Module, x: Tensor) -> list[HeadActivations]:
    """Each classifier head of ``model`` on the batch ``x`` of one image, with its stage-3 and stage-4 maps, the
    main head last. OverLoCK has two: the Overview-Net's auxiliary head (when kept), fed by the Base-Net's stage 3
    and the Overview-Net, and the Focus-Net head, fed by the Focus-Net's stages 3 and 4. Any other timm model, and
    an ablation model without the Overview-Net, has its one head, on its stages 3 and 4."""
    if isinstance(model, OverLoCK) and model.high_level_proj is not None:
        if model.head is None:
            raise ValueError("the dense-prediction backbone has no classifier head to explain")
        check_image_batch(x, model.in_chans)
        base = model.forward_base(x)[2]
        overview, ctx_prior = model.forward_overview(base)
        focus3, focus4 = model.forward_focus(base, ctx_prior)
        heads = []
        if model.aux_head is not None:
            heads.append(HeadActivations("Overview-Net head", model.forward_aux_head(overview), {3: base, 4: overview}))
        heads.append(HeadActivations("Focus-Net head", model.forward_head(focus4), {3: focus3, 4: focus4}))
        return heads
    if not getattr(model, "num_classes", 0):
        raise ValueError("the model has no classifier head to explain")
    indices = [stage_index(model, stage) for stage in CAM_STAGES]
    final, levels = model.forward_intermediates(x, indices=indices)
    return [HeadActivations("head", model.forward_head(final), dict(zip(CAM_STAGES, levels)))]


@dataclass
class CamPanel:
    """One Grad-CAM map (H, W) in [0, 1], with the head and stage it comes from and that head's own top class
    and probability."""

    head: str
    stage: int
    cam: Tensor
    prediction: int
    probability: float


def grad_cam_panels(model: nn.Module, image: Tensor, target: int | None = None) -> tuple[int, list[CamPanel]]:
    """Grad-CAM maps of class ``target`` (the main head's top class when None) for every head and stage of
    :func:`head_activations`, at the resolution of ``image`` (C, H, W), and the class explained."""
    with torch.enable_grad():  # the graph is needed whatever the caller's mode and the parameters' requires_grad
        heads = head_activations(model, image[None].detach().requires_grad_(True))
        if target is None:
            target = int(heads[-1].logits.argmax(1))
        panels = []
        for head in heads:
            maps = grad_cam_maps(head.logits[0, target], list(head.stages.values()), image.shape[-2:])
            probabilities = head.logits.detach().softmax(1)[0]
            top = int(probabilities.argmax())
            panels += [CamPanel(head.name, stage, cam, top, float(probabilities[top]))
                       for stage, cam in zip(head.stages, maps)]
    return target, panels
