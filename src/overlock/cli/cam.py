"""``overlock cam``: Grad-CAM of a classification model's prediction, overlaid on the image (PNG)."""
from __future__ import annotations

import argparse

import timm

import overlock  # noqa: F401  (registers the models)
from overlock.cli.erf import load_images, load_model
from overlock.visualize import grad_cam


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="timm model name, e.g. overlock_t")
    parser.add_argument("image", help="image file")
    parser.add_argument("--weights", help="checkpoint file to load (official or overlock)")
    parser.add_argument("--target", type=int, help="class index to explain (default: the top prediction)")
    parser.add_argument("--out", default="cam.png", help="output PNG")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_model(args.model, args.weights)
    size = model.pretrained_cfg["input_size"][-1]
    image = load_images([args.image], size, model)[0]
    cam, target = grad_cam(model.forward_features, model.forward_head, image, args.target)
    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = (image.new_tensor(cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    shown = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(shown)
    ax.imshow(cam.numpy(), cmap="jet", alpha=0.45)
    ax.set_title(f"{args.model}: Grad-CAM of class {target}")
    ax.axis("off")
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"class {target}; wrote {args.out}")
    return 0
