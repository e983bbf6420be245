"""``overlock cam``: Grad-CAM maps of a prediction as in the OverLoCK paper's Figure 2, beside the image (PNG).

For OverLoCK: the Overview-Net's auxiliary head and the Focus-Net's head, each at stages 3 and 4; for any other timm
classifier: its head at stages 3 and 4. Every map explains the same class (``--target``, else the main head's top
class), named by the model's class names (ImageNet's for a 1000-class model, the run's own for a checkpoint of
``overlock train``).
"""
from __future__ import annotations

import argparse

from .args import add_model_option, model_name, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional=True)
    parser.add_argument("image", help="image file")
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors")
    parser.add_argument("--target", type=non_negative_int, help="class index to explain (default: the main head's "
                                                                "top prediction)")
    parser.add_argument("--img-size", type=positive_int, help="input size (default: the model's, or the run's)")
    parser.add_argument("--out", default="cam.png", help="output PNG")


def _short(label: str) -> str:
    """The first of a class's names (ImageNet's descriptions list several, comma-separated)."""
    return label.split(",")[0]


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from overlock.classification.inference import load_image, load_model
    from overlock.visualize import grad_cam_panels

    loaded = load_model(model_name(args), args.weights, img_size=args.img_size)
    loaded.model.requires_grad_(False)  # Grad-CAM needs the features' gradients only
    image = load_image(args.image, loaded.transform)
    if args.target is not None and args.target >= loaded.num_classes:
        raise ValueError(f"--target {args.target}: the model has {loaded.num_classes} classes "
                         f"(0-{loaded.num_classes - 1})")
    target, panels = grad_cam_panels(loaded.model, image, args.target)

    mean, std = (image.new_tensor(v).view(-1, 1, 1) for v in (loaded.mean, loaded.std))
    shown = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    grey = shown.shape[-1] == 1
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3 * (len(panels) + 1), 3.6))
    axes[0].imshow(shown[..., 0] if grey else shown, cmap="gray" if grey else None)
    axes[0].set_title("input", fontsize=10)
    for ax, panel in zip(axes[1:], panels):
        ax.imshow(shown[..., 0] if grey else shown, cmap="gray" if grey else None)
        ax.imshow(panel.cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"{panel.head}\nstage {panel.stage}", fontsize=10)
        ax.set_xlabel(f"predicts {_short(loaded.label(panel.prediction))} ({panel.probability:.0%})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{loaded.name}: Grad-CAM of class {target}, {_short(loaded.label(target))}", fontsize=11)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    predictions = {panel.head: panel for panel in panels}
    said = "; ".join(f"{head} predicts {loaded.label(p.prediction)} ({p.probability:.1%})"
                     for head, p in predictions.items())
    print(f"Grad-CAM of class {target} ({loaded.label(target)}); {said}; wrote {args.out}")
    return 0
