"""Segmentation data: the two layouts, bad data (clear errors or counted skips), and the official pipelines."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from overlock.segmentation.data import (
    ADE20K_CLASSES, SegmentationDataError, SegmentationDataset, Skipped, TrainPipeline, collate_segmentation,
    fit_size, hsv_to_rgb, multiple_size, prepare_test_image, resize_mask, rgb_to_hsv,
)


def write_pair(root: Path, split: str, name: str, mask: np.ndarray, image_size=None, masks="masks",
               image_ext=".jpg") -> None:
    height, width = image_size or mask.shape
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / masks / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(root / "images" / split / f"{name}{image_ext}")
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / masks / split / f"{name}.png")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "val"):
        for i in range(3):
            write_pair(root, split, f"{i}", np.full((20, 30), i % 3, np.uint8))
    (root / "classes.txt").write_text("sky\ntree\nroad\n")
    return root


def test_folder_layout(folder):
    dataset = SegmentationDataset(folder, "train")
    assert dataset.classes == ["sky", "tree", "road"] and len(dataset) == 3
    image, mask = dataset[1]
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8 and (mask == 1).all()


def test_ade20k_layout_reduces_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    write_pair(root, "training", "a", np.array([[0, 1, 150, 7]]), masks="annotations")
    write_pair(root, "validation", "b", np.array([[0, 1, 150, 7]]), masks="annotations")
    dataset = SegmentationDataset(root, "val", "ade20k")
    assert dataset.num_classes == 150 and dataset.classes == list(ADE20K_CLASSES) and len(set(ADE20K_CLASSES)) == 150
    _, mask = dataset[0]
    assert mask.tolist() == [[255, 0, 149, 6]]


def test_missing_and_empty_folders_are_one_line_errors(folder, tmp_path):
    with pytest.raises(SegmentationDataError, match="data folder not found"):
        SegmentationDataset(tmp_path / "nowhere")
    with pytest.raises(SegmentationDataError, match=r"image folder not found: .*images/training"):
        SegmentationDataset(folder, "train", "ade20k")
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "masks" / "train").mkdir(parents=True)
    (empty / "classes.txt").write_text("a\n")
    with pytest.raises(SegmentationDataError, match="holds no images"):
        SegmentationDataset(empty)
    (folder / "classes.txt").unlink()
    with pytest.raises(SegmentationDataError, match="no class list: write the class names"):
        SegmentationDataset(folder)
    for path in (folder / "masks" / "train").iterdir():
        path.unlink()
    (folder / "classes.txt").write_text("a\n")
    with pytest.raises(SegmentationDataError, match="none of the 3 images .* has a mask"):
        SegmentationDataset(folder)


def test_images_without_a_mask_are_left_out_and_counted(folder, caplog):
    (folder / "masks" / "train" / "2.png").unlink()
    with caplog.at_level(logging.WARNING):
        dataset = SegmentationDataset(folder, "train")
    assert len(dataset) == 2
    assert "1 of 3 images have no mask" in caplog.text and "2.jpg" in caplog.text


def test_bad_samples_are_skipped_with_the_reason(folder, caplog):
    write_pair(folder, "train", "3", np.zeros((10, 10)), image_size=(20, 30))  # mask of another size
    write_pair(folder, "train", "4", np.array([[0, 7], [1, 255]]))  # label 7 with 3 classes; 255 is fine
    write_pair(folder, "train", "5", np.zeros((4, 4)))
    (folder / "images" / "train" / "5.jpg").write_bytes(b"not an image")
    write_pair(folder, "train", "6", np.zeros((4, 4)))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "masks" / "train" / "6.png")  # RGB mask
    dataset = SegmentationDataset(folder, "train")
    with caplog.at_level(logging.WARNING):
        reasons = {Path(s.path).stem: s.reason for s in (dataset[i] for i in range(len(dataset)))
                   if isinstance(s, Skipped)}
    assert reasons["3"] == "mask is 10x10, its image 30x20"
    assert reasons["4"] == "labels outside the 3 classes (0-2, 255 unlabelled): 7"
    assert reasons["5"].startswith("unreadable image")
    assert "not an index image" in reasons["6"]
    assert len(reasons) == 4 and caplog.text.count("skipping") == 4


def test_training_set_substitutes_the_next_usable_sample(folder):
    write_pair(folder, "train", "3", np.zeros((10, 10)), image_size=(20, 30))
    dataset = SegmentationDataset(folder, "train", substitute_skipped=True)
    image, mask, skipped = dataset[3]
    assert skipped == 1 and (mask == 0).all()  # sample 0 took its place
    assert dataset[1][2] == 0
    _, masks, count = collate_segmentation([(torch.zeros(3, 2, 2), torch.zeros(2, 2)) + (1,),
                                            (torch.zeros(3, 2, 2), torch.zeros(2, 2)) + (0,)])
    assert count == 1 and masks.shape == (2, 2, 2)


def test_collate_counts_skipped_samples():
    good = (torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))
    images, masks, skipped = collate_segmentation([good, Skipped("x", "bad"), good])
    assert images.shape == (2, 3, 4, 4) and masks.shape == (2, 4, 4) and skipped == 1
    images, masks, skipped = collate_segmentation([Skipped("x", "bad")])
    assert len(images) == 0 and skipped == 1


@pytest.mark.parametrize("size, fitted, multiple", [
    ((375, 500), (512, 683), (512, 704)),  # short side limits: 512 / 375
    ((512, 683), (512, 683), (512, 704)),
    ((100, 1000), (205, 2048), (224, 2048)),  # long side limits: 2048 / 1000
    ((512, 512), (512, 512), (512, 512)),
])
def test_test_pipeline_sizes(size, fitted, multiple):
    assert fit_size(*size, (2048, 512)) == fitted
    assert multiple_size(*fitted, 32) == multiple
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert prepare_test_image(image).shape == (3, *multiple)


def test_test_pipeline_normalises_with_the_imagenet_statistics():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255
    out = prepare_test_image(image, scale=(64, 64))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([(255 - 123.675) / 58.395, -116.28 / 57.12,
                                                           -103.53 / 57.375]))


def test_nearest_mask_resize_is_opencvs():
    """OpenCV's INTER_NEAREST reads source index floor(i * in / out): PyTorch's 'nearest' mode."""
    mask = np.random.default_rng(0).integers(0, 5, (13, 17))
    for size in ((26, 34), (7, 9), (20, 11)):
        expected = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0]
        assert (resize_mask(mask, size) == expected.long().numpy()).all()


def test_hsv_uses_opencvs_8_bit_conventions():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0]]], np.uint8)
    assert rgb_to_hsv(pixels).tolist() == [[[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128],
                                            [30, 255, 255]]]
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    roundtrip = hsv_to_rgb(rgb_to_hsv(image)).astype(int)
    assert np.abs(roundtrip - image).max() <= 4  # H in 2-degree steps: the 8-bit quantisation


def test_training_pipeline_crops_flips_and_pads():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (40, 60))
    np.random.seed(0)
    pipeline = TrainPipeline(crop_size=(64, 64), scale=(60, 40), ratio_range=(1.0, 1.0), photometric=False,
                             flip_prob=0.0)
    out_image, out_mask = pipeline(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64) and out_mask.dtype == torch.long
    assert (out_mask[:40, :60].numpy() == mask).all()
    assert (out_mask[40:] == 255).all() and (out_mask[:, 60:] == 255).all()
    assert (out_image[:, 40:] == 0).all() and (out_image[:, :, 60:] == 0).all()
    flipped = TrainPipeline(crop_size=(64, 64), scale=(60, 40), ratio_range=(1.0, 1.0), photometric=False,
                            flip_prob=1.0)(image, mask)[1]
    assert (flipped[:40, :60].numpy() == mask[:, ::-1]).all()


def test_training_pipeline_is_a_function_of_the_seed():
    rng = np.random.default_rng(1)
    image, mask = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), rng.integers(0, 4, (120, 90))
    pipeline = TrainPipeline(crop_size=(48, 48), scale=(100, 60))
    results = []
    for _ in range(2):
        np.random.seed(7)
        results.append(pipeline(image, mask))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
