"""Segmentation data: the two layouts, bad data (clear errors or counted skips), and the official pipelines."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from overlock.segmentation.data import (
    ADE20K_CLASSES, SegmentationDataError, SegmentationDataset, Skipped, TrainPipeline, collate_segmentation,
    fit_size, multiple_size, prepare_test_image,
)
from overlock.data.image_io import read_image


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


def test_label_reduction_keeps_255_ignored(tmp_path):
    """mmsegmentation's reduction: 0 -> 255, c -> c - 1, then 254 -> 255, so a raw 255 stays ignored and the
    sample is used (not skipped for a label 254 outside the classes)."""
    root = tmp_path / "ADEChallengeData2016"
    write_pair(root, "training", "a", np.array([[0, 1, 150, 255, 7]]), masks="annotations")
    write_pair(root, "validation", "b", np.array([[255, 255, 0, 2, 151]]), masks="annotations")
    assert SegmentationDataset(root, "train", "ade20k")[0][1].tolist() == [[255, 0, 149, 255, 6]]
    skipped = SegmentationDataset(root, "val", "ade20k")[0]  # raw 151 is class 150 of 0-149: still an error
    assert isinstance(skipped, Skipped) and skipped.reason.endswith("unlabelled): 150")
    folder = tmp_path / "folder"
    write_pair(folder, "train", "a", np.array([[255, 1, 2], [0, 255, 255]]))
    (folder / "classes.txt").write_text("sky\ntree\n")
    _, mask = SegmentationDataset(folder, "train", reduce_zero_label=True)[0]
    assert mask.tolist() == [[255, 0, 1], [255, 255, 255]]


def exif_image(path: Path, pixels: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def test_exif_orientation_is_applied_to_images_not_masks(folder, caplog):
    """As mmsegmentation reads: images through mmcv's 'color' decoding (EXIF orientation applied), masks
    'unchanged' (as stored). Training, validation and ``overlock.segmentation.read_image`` read the same pixels."""
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[:2, :3] = (200, 30, 30)
    turned = np.rot90(pixels, -1)  # orientation 6: shown turned 90 degrees clockwise
    mask = np.zeros((6, 4), np.uint8)
    mask[:3, 2:] = 1  # drawn on the image as shown
    for split in ("train", "val"):
        write_pair(folder, split, "9", mask, image_ext=".png")
        exif_image(folder / "images" / split / "9.png", pixels, 6)
        write_pair(folder, split, "8", np.zeros((4, 6)), image_ext=".png")  # masked as stored: sides swapped
        exif_image(folder / "images" / split / "8.png", pixels, 6)
    train = SegmentationDataset(folder, "train", transform=lambda image, mask: (image, mask))
    val = SegmentationDataset(folder, "val")
    for dataset in (train, val):
        names = [image.stem for image, _ in dataset.samples]
        image, loaded_mask = dataset[names.index("9")]
        assert np.array_equal(image, turned) and np.array_equal(loaded_mask, mask)
        assert np.array_equal(read_image(folder / "images" / dataset.split / "9.png"), image)
        with caplog.at_level(logging.WARNING):
            skipped = dataset[names.index("8")]
        assert isinstance(skipped, Skipped) and skipped.reason == (
            "mask is 6x4, its image 4x6 (sides swapped: images are turned by their EXIF orientation tag, masks read "
            "as stored)")


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


def test_test_pipeline_resizes_as_mmcv():
    """mmcv's imrescale (bilinear) into the scale, then imresize_to_multiple (bicubic): OpenCV on uint8."""
    image = cv2.GaussianBlur(np.random.default_rng(5).integers(0, 256, (75, 100, 3), dtype=np.uint8), (5, 5), 1.5)
    fitted = cv2.resize(image, (171, 128), interpolation=cv2.INTER_LINEAR)  # 100 * 128 / 75 = 170.67
    expected = cv2.resize(fitted, (192, 128), interpolation=cv2.INTER_CUBIC)
    normalised = (torch.from_numpy(expected).permute(2, 0, 1).float() - torch.tensor(
        [123.675, 116.28, 103.53]).view(3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(prepare_test_image(image, scale=(512, 128)), normalised, rtol=0, atol=1e-5)


def test_test_pipeline_normalises_with_the_imagenet_statistics():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255
    out = prepare_test_image(image, scale=(64, 64))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([(255 - 123.675) / 58.395, -116.28 / 57.12,
                                                           -103.53 / 57.375]))


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


def mmseg_training_sample(image_rgb: np.ndarray, mask: np.ndarray, crop: int, scale: tuple[int, int]):
    """mmsegmentation 0.30's ADE20K training pipeline written out from its transforms' semantics, on mmcv's OpenCV
    calls and in its BGR order, drawing from numpy's global generator in its order: Resize (ratio in [0.5, 2]),
    RandomCrop (cat_max_ratio 0.75), RandomFlip (0.5), PhotoMetricDistortion; returns the uint8 RGB crop and mask."""
    rand = np.random
    img, seg = np.ascontiguousarray(image_rgb[..., ::-1]), mask.astype(np.uint8)
    ratio = rand.random_sample() * 1.5 + 0.5
    long_side, short_side = int(scale[0] * ratio), int(scale[1] * ratio)
    h, w = img.shape[:2]
    factor = min(long_side / max(h, w), short_side / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(seg, size, interpolation=cv2.INTER_NEAREST)

    def crop_origin():
        return rand.randint(0, max(seg.shape[0] - crop, 0) + 1), rand.randint(0, max(seg.shape[1] - crop, 0) + 1)

    top, left = crop_origin()
    for _ in range(10):
        labels, counts = np.unique(seg[top:top + crop, left:left + crop], return_counts=True)
        counts = counts[labels != 255]
        if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
            break
        top, left = crop_origin()
    img, seg = img[top:top + crop, left:left + crop], seg[top:top + crop, left:left + crop]
    if rand.rand() < 0.5:
        img, seg = img[:, ::-1], seg[:, ::-1]
    img = np.ascontiguousarray(img)

    def convert(values, alpha=1.0, beta=0.0):
        return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rand.randint(2):
        img = convert(img, beta=rand.uniform(-32, 32))
    contrast_last = rand.randint(2) == 0
    if not contrast_last and rand.randint(2):
        img = convert(img, alpha=rand.uniform(0.5, 1.5))
    if rand.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rand.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rand.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rand.randint(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if contrast_last and rand.randint(2):
        img = convert(img, alpha=rand.uniform(0.5, 1.5))
    return img[..., ::-1], seg


def test_training_pipeline_gives_mmsegmentations_pixels():
    """Same seed, same draws, same OpenCV arithmetic: the crops equal mmsegmentation's pixel for pixel (a float
    resize or an own HSV conversion would be a grey level off in places: 1/58 after normalisation)."""
    rng = np.random.default_rng(4)
    image = cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), (5, 5), 1.5)
    mask = np.repeat(np.repeat(rng.integers(0, 4, (9, 12)), 10, 0), 10, 1)
    mask[:5] = 255
    pipeline = TrainPipeline(crop_size=(48, 48), scale=(100, 60))
    for seed in range(12):
        np.random.seed(seed)
        expected_image, expected_mask = mmseg_training_sample(image, mask, 48, (100, 60))
        after = np.random.random_sample()
        np.random.seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert np.random.random_sample() == after  # the same number of draws
        h, w = expected_mask.shape
        assert np.array_equal(out_mask[:h, :w].numpy(), expected_mask)
        normalised = (torch.from_numpy(expected_image.copy()).permute(2, 0, 1).float()
                      - torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)) / torch.tensor(
                          [58.395, 57.12, 57.375]).view(3, 1, 1)
        torch.testing.assert_close(out_image[:, :h, :w], normalised, rtol=0, atol=1e-5)
