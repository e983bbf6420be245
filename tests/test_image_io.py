"""Reading, resizing and recolouring as mmcv 1.x does: against direct OpenCV calls (what mmcv runs) and against
hand-worked cases of OpenCV's rules (EXIF orientation, fixed-point bilinear weights, the double-precision
nearest-neighbour index, mmcv's keep-ratio rounding, 8-bit HSV)."""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from overlock.data.image_io import (
    decode_image, fit_size, hsv_to_rgb, read_image, resize_image, resize_mask, rgb_to_hsv,
)

ORIENTATION = 0x0112  # the EXIF tag


def encoded(pixels: np.ndarray, fmt: str = "PNG", orientation: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    image.save(buffer, format=fmt, exif=exif, **options)
    return buffer.getvalue()


def test_decoding_gives_rgb_as_stored(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encoded(pixels))
    assert np.array_equal(read_image(tmp_path / "a.png"), pixels)  # RGB, not OpenCV's BGR
    grey = pixels[..., 0]
    assert np.array_equal(decode_image(encoded(grey)), np.repeat(grey[..., None], 3, axis=2))
    rgba = np.concatenate([pixels, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(decode_image(encoded(rgba)), pixels)  # alpha dropped


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied_as_mmcv_color_flag_does(fmt, orientation, turn):
    """mmcv's imfrombytes(flag='color') is cv2.imdecode(IMREAD_COLOR), which turns the image by its EXIF tag
    (6: stored rotated 90 degrees anticlockwise, shown turned clockwise); Pillow's exif_transpose agrees."""
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:8, :12] = (250, 10, 10)  # a red top-left quarter, so that every turn is told apart
    data = encoded(pixels, fmt, orientation)
    decoded = decode_image(data)
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    if fmt == "PNG":
        assert np.array_equal(decoded, turn(pixels))
        assert np.array_equal(decoded, expected)
    else:  # lossy: the same turn, pixels within JPEG's error
        assert decoded.shape == turn(pixels).shape == expected.shape
        assert np.abs(decoded.astype(int) - turn(pixels)).max() < 40


def test_undecodable_bytes_are_a_value_error():
    for content, message in ((b"", "empty file"), (b"not an image", "not an image OpenCV can decode")):
        with pytest.raises(ValueError, match=message):
            decode_image(content)


def test_keep_ratio_sizes_round_half_up_as_mmcv():
    assert fit_size(5, 10, (5, 5)) == (3, 5)  # factor 0.5: int(2.5 + 0.5) = 3, where round() would give 2
    assert fit_size(375, 500, (2048, 512)) == (512, 683)  # 500 * 512 / 375 = 682.67
    assert fit_size(100, 1000, (2048, 512)) == (205, 2048)  # long side limits: 100 * 2.048 = 204.8


def test_image_resize_is_opencvs_bilinear_and_bicubic():
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in ((20, 31), (64, 97), (37, 80)):
        expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_image(image, size), expected)
        expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        assert np.array_equal(resize_image(image, size, "bicubic"), expected)
    flipped = image[:, ::-1]  # views (a flipped crop) are resized like copies
    assert np.array_equal(resize_image(flipped, (20, 31)), resize_image(flipped.copy(), (20, 31)))
    with pytest.raises(ValueError, match="mode must be one of"):
        resize_image(image, (4, 4), "area")


def test_bilinear_hand_worked():
    """Half-pixel centres: output x samples source (x + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
    (clamped to 1); weights 0.25 / 0.75 are exact in OpenCV's 11-bit fixed point."""
    row = np.array([[[0, 0, 0], [255, 100, 8]]], np.uint8)
    assert resize_image(row, (1, 4))[0, :, 0].tolist() == [0, 64, 191, 255]  # 63.75 and 191.25, rounded
    assert resize_image(row, (1, 4))[0, :, 1].tolist() == [0, 25, 75, 100]
    block = np.arange(16, dtype=np.uint8).reshape(4, 4)[..., None].repeat(3, 2) * 10
    halved = resize_image(block, (2, 2))  # exactly 2x down: the mean of each 2x2 block
    assert halved[..., 0].tolist() == [[25, 45], [105, 125]]


def test_mask_resize_is_opencvs_nearest():
    mask = np.random.default_rng(2).integers(0, 150, (13, 17))
    for size in ((26, 34), (7, 9), (20, 11), (18, 51)):
        expected = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        resized = resize_mask(mask, size)
        assert resized.dtype == mask.dtype and np.array_equal(resized, expected)


def test_mask_nearest_index_in_double_precision():
    """OpenCV reads source index floor(i * (1 / (out / in))) in double precision, not the exact floor(i * in / out):
    for 14 -> 18 columns, output 9 reads column 6 (9 * 0.7777... = 6.999...), where exact arithmetic gives 7."""
    columns = np.arange(14)[None]
    assert resize_mask(columns, (1, 18))[0, 9] == 6 and 9 * 14 // 18 == 7
    for n_in, n_out in ((14, 18), (6, 34), (9, 51), (21, 27), (37, 23), (13, 39)):
        expected = [min(math.floor(i * (1.0 / (n_out / n_in))), n_in - 1) for i in range(n_out)]
        assert resize_mask(np.arange(n_in)[None], (1, n_out))[0].tolist() == expected
        assert resize_mask(np.arange(n_in)[:, None], (n_out, 1))[:, 0].tolist() == expected


def test_hsv_is_opencvs_8_bit_conversion():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0], [0, 64, 128]]],
                      np.uint8)
    # hand-worked: H = degrees / 2, S = 255 (max - min) / max, V = max; (0, 64, 128): 210 degrees, S 255, V 128
    assert rgb_to_hsv(pixels).tolist() == [[[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128],
                                            [30, 255, 255], [105, 255, 128]]]
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(image)
    assert np.array_equal(hsv, cv2.cvtColor(image[..., ::-1].copy(), cv2.COLOR_BGR2HSV))  # mmcv's bgr2hsv
    back = hsv_to_rgb(hsv)
    assert np.array_equal(back, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[..., ::-1])  # mmcv's hsv2bgr
    assert np.abs(back.astype(int) - image).max() <= 4  # hue in 2-degree steps: the 8-bit quantisation


def test_classification_reads_as_stored_in_training_and_prediction(tmp_path):
    """Classification reads with Pillow as timm and the official classification code do: no EXIF orientation,
    the same in its training/validation folders and in ``overlock predict``/``cam``/``erf`` (``load_image``)."""
    import torch

    from overlock.data.folder import ImageFolderDataset
    from overlock.classification.inference import load_image

    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[:2, :3] = (200, 30, 30)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(encoded(pixels, orientation=6))

    def as_tensor(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image).copy())

    trained, _ = ImageFolderDataset(tmp_path, as_tensor)[0]
    assert np.array_equal(trained.numpy(), pixels)
    assert np.array_equal(load_image(tmp_path / "cat" / "a.png", as_tensor).numpy(), pixels)
    assert decode_image((tmp_path / "cat" / "a.png").read_bytes()).shape == (6, 4, 3)  # segmentation turns it
