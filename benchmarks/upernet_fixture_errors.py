"""Largest relative errors of our UperNet against the official one (mmsegmentation 0.30), per output of
``../shared/fixtures/official_upernet_tiny.pt``: the figures of docs/models.md and the README.

    python benchmarks/upernet_fixture_errors.py [--fixture PATH]

Relative error: the largest absolute difference over the largest magnitude of the official output, as
``tests/test_upernet_fixture.py`` measures it (which asserts each is below 1e-5).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from overlock.segmentation.upernet import upernet_from_mmseg_config
from overlock.segmentation.inference import slide_logits, whole_logits
from overlock.segmentation.loss import segmentation_losses

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_upernet_tiny.pt"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", default=str(FIXTURE))
    fixture = torch.load(parser.parse_args().fixture, weights_only=True)
    model = upernet_from_mmseg_config(fixture["config"])
    model.load_state_dict(fixture["state_dict"])
    model.eval()
    errors: dict[str, float] = {}

    def record(name: str, value: float) -> None:
        errors[name] = max(errors.get(name, 0.0), value)

    for size, x in fixture["inputs"].items():
        features = model.forward_features(x)
        for ours, official in zip(features, fixture["backbone_features"][size], strict=True):
            record("backbone features (4 levels)", rel_err(ours, official))
        record("decode logits", rel_err(model.decode_head(features), fixture["decode_logits"][size]))
        record("auxiliary logits", rel_err(model.auxiliary_head(features[2]), fixture["aux_logits"][size]))
        record("whole-image logits", rel_err(whole_logits(model, x), fixture["whole_logits"][size]))
    slide = fixture["slide"]
    record("sliding-window logits", rel_err(slide_logits(model, fixture["inputs"][slide["input"]],
                                                         slide["crop_size"], slide["stride"]), slide["logits"]))
    rescaled = fixture["rescaled"]
    logits = whole_logits(model, fixture["inputs"][rescaled["input"]])
    probs = torch.softmax(F.interpolate(logits, rescaled["ori_shape"][:2], mode="bilinear"), dim=1)
    record("rescaled probabilities", rel_err(probs, rescaled["probs"]))
    losses = fixture["losses"]
    features = model.forward_features(fixture["inputs"][losses["input"]])
    ours = segmentation_losses((model.decode_head(features), model.auxiliary_head(features[2])), losses["labels"])
    for name, official in losses["values"].items():
        record(name, rel_err(ours[name].reshape(official.shape), official))
    print(f"{'output':<30} {'rel. error':>10}")
    for name, value in errors.items():
        print(f"{name:<30} {value:>10.1e}")


if __name__ == "__main__":
    main()
