"""OverLoCK inside torchvision's Mask R-CNN: training losses and inference outputs."""
from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN

from overlock.detection import fpn_backbone


def _detector():
    torch.manual_seed(0)
    backbone = fpn_backbone("test_overlock", out_channels=32)
    return MaskRCNN(backbone, num_classes=3, min_size=96, max_size=128)


def test_fpn_levels_and_channels():
    backbone = fpn_backbone("test_overlock", out_channels=32).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 96, 128))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert all(v.shape[1] == 32 for v in out.values())


def test_mask_rcnn_trains_and_infers():
    model = _detector().train()
    images = [torch.rand(3, 96, 112), torch.rand(3, 100, 128)]
    masks = torch.zeros(1, 96, 112, dtype=torch.uint8)
    masks[0, 20:60, 30:80] = 1
    targets = [
        {"boxes": torch.tensor([[30.0, 20.0, 80.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 100, 128, dtype=torch.uint8)},
    ]
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    assert model.backbone.body.model.patch_embed1[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "labels", "scores", "masks"} <= set(detections[0])
