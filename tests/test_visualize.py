"""Effective receptive fields and Grad-CAM against known cases, and their commands."""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from overlock.cli.main import main
from overlock.visualize import effective_receptive_field, erf_high_contribution_area, grad_cam


def test_erf_of_a_conv_stack_is_its_theoretical_window():
    """n stacked 3x3 convs with positive weights see exactly a (2n+1) x (2n+1) window."""
    n = 3
    stack = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1, bias=False) for _ in range(n)])
    for conv in stack:
        nn.init.uniform_(conv.weight, 0.1, 1.0)
    erf = effective_receptive_field(stack, torch.randn(2, 2, 21, 21))
    support = (erf > 0).nonzero()
    assert support[:, 0].min() == 10 - n and support[:, 0].max() == 10 + n
    assert support[:, 1].min() == 10 - n and support[:, 1].max() == 10 + n
    assert (erf[10 - n : 11 + n, 10 - n : 11 + n] > 0).all()


def test_high_contribution_area():
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1
    assert erf_high_contribution_area(delta, 0.99) == 1 / 81
    uniform = torch.ones(8, 8)
    assert erf_high_contribution_area(uniform, 0.25) == 25 / 64  # squares of side 1, 3, 5 around (4, 4)


def test_grad_cam_of_a_linear_head_is_the_weighted_map():
    feats = torch.zeros(2, 6, 6)
    feats[0, 1:3, 2:5] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    feats[1] = torch.rand(6, 6)

    def head(f):
        return f.mean(dim=(2, 3)) @ torch.tensor([[2.0, 0.0], [0.0, 1.0]])

    cam, target = grad_cam(lambda x: x, head, feats, target=0)
    assert target == 0
    torch.testing.assert_close(cam, feats[0] / feats[0].max())


def test_erf_and_cam_commands(tmp_path):
    erf_png = tmp_path / "erf.png"
    assert main(["erf", "test_overlock", "--img-size", "64", "--num-random", "1", "--out", str(erf_png)]) == 0
    assert erf_png.read_bytes()[:4] == b"\x89PNG"
    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(80, 70, 3) * 255).byte().numpy()).save(image)
    cam_png = tmp_path / "cam.png"
    assert main(["cam", "test_overlock", str(image), "--target", "3", "--out", str(cam_png)]) == 0
    assert cam_png.read_bytes()[:4] == b"\x89PNG"
