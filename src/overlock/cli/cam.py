"""``overlock cam``: Grad-CAM of a classification model's prediction, overlaid on the image (PNG)."""
from __future__ import annotations

import argparse

from .args import add_model_option, model_name, non_negative_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional=True)
    parser.add_argument("image", help="image file")
    parser.add_argument("--weights", help="checkpoint file: official weights, or an overlock run's best.pth or "
                                          "best.safetensors")
    parser.add_argument("--target", type=non_negative_int, help="class index to explain (default: the top prediction)")
    parser.add_argument("--out", default="cam.png", help="output PNG")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from overlock.classification.inference import load_image, load_model
    from overlock.visualize import grad_cam

    loaded = load_model(model_name(args), args.weights)
    image = load_image(args.image, loaded.transform)
    if args.target is not None and args.target >= loaded.num_classes:
        raise ValueError(f"--target {args.target}: the model has {loaded.num_classes} classes "
                         f"(0-{loaded.num_classes - 1})")
    model = loaded.model
    cam, target = grad_cam(model.forward_features, model.forward_head, image, args.target)
    mean, std = (image.new_tensor(v).view(-1, 1, 1) for v in (loaded.mean, loaded.std))
    shown = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray" if shown.shape[-1] == 1 else None)
    ax.imshow(cam.numpy(), cmap="jet", alpha=0.45)
    ax.set_title(f"{loaded.name}: Grad-CAM of class {target} ({loaded.label(target)})")
    ax.axis("off")
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"class {target} ({loaded.label(target)}); wrote {args.out}")
    return 0
