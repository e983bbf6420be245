"""Effective receptive fields (RepLKNet's rules) and Grad-CAM against hand-worked cases, and their commands end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo
from torch import nn

from overlock.cli.main import main
from overlock.visualize import (
    contribution_map,
    effective_receptive_field,
    erf_area_ratios,
    erf_log_scaled,
    grad_cam_maps,
    grad_cam_panels,
    head_activations,
    high_contribution_area,
    stage_index,
)


# ---------------------------------------------------------------- effective receptive field
def test_contribution_map_of_one_conv_is_its_positive_weights():
    """One 3x3 conv: the centre output's input gradient is the kernel itself around the centre; RepLKNet keeps only
    positive gradients (summed over input channels) and only output channels whose centre value is positive."""
    conv = nn.Conv2d(2, 2, 3, padding=1)
    kernel = torch.tensor([[[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 0.25, -0.5]],
                           [[-1.0, 1.0, 0.5], [4.0, -3.0, 1.0], [0.0, 0.75, 2.0]]])
    with torch.no_grad():
        conv.weight[0] = kernel
        conv.weight[1] = 100.0  # a huge positive kernel on a channel switched off by its bias
        conv.bias.copy_(torch.tensor([1000.0, -1e6]))
    image = torch.rand(2, 7, 7)
    scores = contribution_map(conv, image)
    conv.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(contribution_map(conv, image), scores)
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = kernel.clamp_min(0).sum(0)  # channel 0's weights; channel 1 is ReLU'd away
    torch.testing.assert_close(scores, expected)


def test_erf_of_a_conv_stack_is_its_theoretical_window():
    """n stacked 3x3 convs with positive weights see exactly a (2n+1) x (2n+1) window."""
    n = 3
    stack = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1, bias=False) for _ in range(n)])
    for conv in stack:
        nn.init.uniform_(conv.weight, 0.1, 1.0)
    erf, count = effective_receptive_field(stack, torch.rand(2, 2, 21, 21) + 0.1)
    assert count == 2
    support = (erf > 0).nonzero()
    assert support[:, 0].min() == 10 - n and support[:, 0].max() == 10 + n
    assert support[:, 1].min() == 10 - n and support[:, 1].max() == 10 + n
    assert (erf[10 - n : 11 + n, 10 - n : 11 + n] > 0).all()


def test_erf_averages_the_first_images_with_finite_gradients():
    """Features sqrt(x): the centre's gradient is 1 / (2 sqrt(x)) per channel, infinite at 0 (that image is left
    out, as RepLKNet's script skips NaN maps, and the next one taken)."""
    def image(centre: tuple[float, float]) -> torch.Tensor:
        x = torch.ones(2, 5, 5)
        x[:, 2, 2] = torch.tensor(centre)
        return x

    images = [image((4.0, 1.0)), image((0.0, 1.0)), image((1.0, 1.0)), image((9.0, 9.0))]
    erf, count = effective_receptive_field(torch.sqrt, iter(images), num_images=2)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2, 2] = ((0.25 + 0.5) + (0.5 + 0.5)) / 2
    assert count == 2
    torch.testing.assert_close(erf, expected)
    erf, count = effective_receptive_field(torch.sqrt, iter(images[:1]), num_images=50)
    assert count == 1 and erf[2, 2] == 0.75
    with pytest.raises(ValueError, match="no image gave a finite gradient"):
        effective_receptive_field(torch.sqrt, iter(images[1:2]))


def test_high_contribution_area_by_hand():
    """Uniform 9x9 map: centred squares of side 3, 5, 7 hold 9, 25, 49 of 81; the share must exceed the threshold
    (9/81 exactly is not enough) and, as in RepLKNet's get_rectangle, the whole map (side 9) is never a candidate."""
    uniform = torch.ones(9, 9, dtype=torch.float64)
    assert high_contribution_area(uniform, 0.2) == (5, 25 / 81)
    assert high_contribution_area(uniform, 0.3) == (5, 25 / 81)
    assert high_contribution_area(uniform, 9 / 81) == (5, 25 / 81)
    assert high_contribution_area(uniform, 0.5) == (7, 49 / 81)
    assert high_contribution_area(uniform, 0.99) is None
    assert high_contribution_area(torch.zeros(9, 9), 0.2) is None
    # even sides: the centre is pixel (H // 2, W // 2), so the squares reach one pixel further up-left than down-right
    even = torch.zeros(8, 8)
    even[4, 4] = 1
    assert high_contribution_area(even, 0.99) == (3, 9 / 64)


def test_area_ratios_are_measured_on_the_log_scaled_map():
    """7x7 map, 999 at the centre and 9 elsewhere: log10(1 + x) gives 3 and 1, scaled 1 and 1/3 (total 17). Side 3
    holds 11/3 (21.6%), side 5 holds 9 (52.9%). Measured on the raw map the centre alone would hold 70%."""
    erf = torch.full((7, 7), 9.0, dtype=torch.float64)
    erf[3, 3] = 999.0
    scaled = erf_log_scaled(erf)
    assert scaled[3, 3] == pytest.approx(1.0) and scaled[0, 0] == pytest.approx(1 / 3)
    assert erf_area_ratios(erf) == {0.2: pytest.approx(9 / 49), 0.3: pytest.approx(25 / 49),
                                    0.5: pytest.approx(25 / 49), 0.99: None}


def _replknet_ratios(matrix: np.ndarray, thresholds) -> list:
    """RepLKNet's analysis, restated here in NumPy from its description: log10(x + 1), divided by the maximum, then
    the first centred square of half-width 1 .. H//2 - 1 whose share exceeds the threshold."""
    data = np.log10(matrix + 1)
    data = data / data.max()
    h, w = data.shape
    out = []
    for threshold in thresholds:
        found = None
        for i in range(1, h // 2):
            area = data[h // 2 - i : h // 2 + 1 + i, w // 2 - i : w // 2 + 1 + i]
            if area.sum() / data.sum() > threshold:
                found = (2 * i + 1) / h * (2 * i + 1) / w
                break
        out.append(found)
    return out


def test_area_ratios_match_replknet_rules_on_a_gradient_map():
    """A constructed contribution map (a heavy-tailed blob off a little from the centre, plus noise)."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = 1e4 / (1 + ((ys - 31) ** 2 + (xs - 33) ** 2) / 20) ** 3
    erf = blob.double() + 1e-3 * torch.rand(64, 64, generator=generator, dtype=torch.float64)
    thresholds = (0.2, 0.3, 0.5, 0.99)
    expected = _replknet_ratios(erf.numpy(), thresholds)
    assert list(erf_area_ratios(erf, thresholds).values()) == pytest.approx(expected)
    assert expected[0] < expected[1] < expected[2] < expected[3]  # the case exercises four different squares


def test_stage_index_counts_strides():
    assert stage_index(timm.create_model("test_resnet"), 1) == 1  # level 0 is the stride-2 stem
    assert stage_index(timm.create_model("test_overlock"), 3) == 2
    with pytest.raises(ValueError, match="no stage 4 .stride 32.; its feature levels have strides 16"):
        stage_index(timm.create_model("test_vit"), 4)


# ---------------------------------------------------------------- Grad-CAM
def test_grad_cam_of_a_pooled_linear_head_by_hand():
    """Head: mean-pooled features times [1, -1]. Each channel's weight is its logit weight over the 4 positions,
    so the map is ReLU((A0 - A1) / 4) scaled to a maximum of 1."""
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]])[None].requires_grad_(True)
    score = feats.mean(dim=(2, 3))[0] @ torch.tensor([1.0, -1.0])
    (cam,) = grad_cam_maps(score, [feats], (2, 2))
    torch.testing.assert_close(cam, torch.tensor([[0.0, 0.5], [0.75, 1.0]]))


def test_grad_cam_weights_are_the_mean_gradient():
    """A score that is not a plain average: 3 * sum(A0 * M) + 2 * mean(A1), M the left column. The gradients are 3M
    and 2/4 everywhere, so the channel weights are their means, 1.5 and 0.5: 1.5 A0 + 0.5 A1 = [[2.5, 0.5],
    [0.25, -0.5]], ReLU'd and divided by 2.5."""
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    feats = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[-1.0, 1.0], [0.5, -4.0]]])[None].requires_grad_(True)
    (cam,) = grad_cam_maps(3 * (feats[0, 0] * mask).sum() + 2 * feats[0, 1].mean(), [feats], (2, 2))
    torch.testing.assert_close(cam, torch.tensor([[1.0, 0.2], [0.1, 0.0]]))
    (upsampled,) = grad_cam_maps(3 * (feats[0, 0] * mask).sum() + 2 * feats[0, 1].mean(), [feats], (4, 4))
    # bilinear, half-pixel centres: the corners keep the 2x2 values, the middle is their mean
    assert upsampled.shape == (4, 4)
    torch.testing.assert_close(upsampled[[0, 0, 3, 3], [0, 3, 0, 3]], torch.tensor([1.0, 0.2, 0.1, 0.0]))
    torch.testing.assert_close(upsampled[1:3, 1:3].mean(), torch.tensor(1.3 / 4))


def test_overlock_heads_are_the_models_own_outputs():
    """The two heads' logits equal the model's own (main, auxiliary) outputs, and each is explained at stages 3, 4."""
    model = timm.create_model("test_overlock").eval()
    x = torch.randn(1, 3, 64, 64)
    heads = head_activations(model, x)
    assert [h.name for h in heads] == ["Overview-Net head", "Focus-Net head"]
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        main_logits, aux_logits = model(x)
    torch.testing.assert_close(heads[1].logits, main_logits)
    torch.testing.assert_close(heads[0].logits, aux_logits)
    assert [tuple(h.stages) for h in heads] == [(3, 4), (3, 4)]
    assert heads[0].stages[3].shape[-1] == 4 and heads[0].stages[4].shape[-1] == 2  # strides 16 and 32


@pytest.mark.parametrize("switches", [
    dict(overview_net=False, sub_depths=(0, 0), feedback=True),  # Table 6's recurrent model
    dict(feature_feed=False, focus_block_kwargs=dict(dynamic=False, gate=False, reinject_prior=False)),
], ids=["recurrent", "no_feature_feed"])
def test_overlock_ablations_without_an_overview_net_have_one_head(switches):
    model = timm.create_model("test_overlock", **switches).eval()
    x = torch.randn(1, 3, 64, 64)
    (head,) = head_activations(model, x)
    torch.testing.assert_close(head.logits, model(x))
    assert tuple(head.stages) == (3, 4) and head.stages[4].shape[-1] == 2


def test_grad_cam_panels_explain_one_class_for_every_head_and_stage():
    model = timm.create_model("test_overlock").eval()
    image = torch.randn(3, 64, 48)
    target, panels = grad_cam_panels(model, image)
    assert target == int(model(image[None]).argmax())
    assert [(p.head, p.stage) for p in panels] == [("Overview-Net head", 3), ("Overview-Net head", 4),
                                                  ("Focus-Net head", 3), ("Focus-Net head", 4)]
    for panel in panels:
        assert panel.cam.shape == (64, 48) and 0 <= panel.cam.min() and panel.cam.max() <= 1
    model.requires_grad_(False)  # frozen and under no_grad, as the commands run it: the same maps
    with torch.no_grad():
        _, frozen = grad_cam_panels(model, image, target)
    for panel, again in zip(panels, frozen):
        torch.testing.assert_close(again.cam, panel.cam)
    target, panels = grad_cam_panels(timm.create_model("test_resnet").eval(), image, target=7)
    assert target == 7 and [(p.head, p.stage) for p in panels] == [("head", 3), ("head", 4)]


def test_erf_input_is_the_image_squashed_to_size_and_normalised():
    """RepLKNet's input: bicubic resize to S x S (no crop, aspect ratio not kept), then (x / 255 - mean) / std."""
    from overlock.cli.erf import replknet_transform

    pixels = (torch.rand(30, 50, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    image = Image.fromarray(pixels)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    resized = np.asarray(image.resize((40, 40), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std)[:, None, None]
    torch.testing.assert_close(replknet_transform(40, mean, std)(image), expected)
    assert replknet_transform(40, (0.5,), (0.25,))(image).shape == (1, 40, 40)


# ---------------------------------------------------------------- the commands
def _image_folder(root, count: int):
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(40 + i, 50, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_erf_command_compares_models_on_a_folder(tmp_path, capsys):
    images = _image_folder(tmp_path / "images", 2)
    out, table = tmp_path / "erf.png", tmp_path / "erf.csv"
    assert main(["erf", "--model", "test_overlock", "--model", "test_resnet", "--images", str(images),
                 "--num-images", "1", "--stage", "3", "--img-size", "32", "--out", str(out), "--table",
                 str(table), "--save-matrices", str(tmp_path / "matrices")]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| test_overlock | 3 | 1 | 32x32 |" in printed and "| test_resnet | 3 | 1 | 32x32 |" in printed
    rows = list(csv.DictReader(table.open()))
    assert [r["model"] for r in rows] == ["test_overlock", "test_resnet"]
    for row in rows:
        ratios = [float(row[f"ratio_t{t}"]) for t in (0.2, 0.3, 0.5) if row[f"ratio_t{t}"]]
        assert ratios == sorted(ratios) and all(0 < r <= 1 for r in ratios)
        # the saved matrix (RepLKNet's .npy) gives the table's ratios by RepLKNet's rules
        matrix = np.load(tmp_path / "matrices" / f"{row['model']}.npy")
        assert matrix.shape == (32, 32) and matrix.min() >= 0
        expected = _replknet_ratios(matrix, (0.2, 0.3, 0.5, 0.99))
        table_ratios = [float(row[f"ratio_t{t}"]) if row[f"ratio_t{t}"] else None for t in (0.2, 0.3, 0.5, 0.99)]
        assert table_ratios == pytest.approx(expected, abs=1e-6)
    markdown = tmp_path / "erf.md"
    assert main(["erf", "test_overlock", "--img-size", "32", "--num-random", "1", "--out", str(out), "--table",
                 str(markdown)]) == 0
    assert markdown.read_text().startswith("| model | stage | images | input | t = 20% | t = 30% | t = 50% | t = 99% |")


def test_cam_command_names_the_class(tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(80, 70, 3) * 255).byte().numpy()).save(image)
    out = tmp_path / "cam.png"
    assert main(["cam", "--model", "test_overlock", str(image), "--target", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert f"Grad-CAM of class 3 ({ImageNetInfo().index_to_description(3)})" in printed
    assert "Overview-Net head predicts" in printed and "Focus-Net head predicts" in printed
