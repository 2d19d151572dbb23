"""Decoding: every odd-but-valid file (grey, alpha, palette, 16 bits, CMYK, EXIF-rotated, tiny, thin) becomes the
right RGB pixels; every broken one (empty, truncated, not an image, a decompression bomb) one short error.

The corpus (tests/data/conftest.py) is generated with PIL and numpy, so each case is visible in the tests.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from resnets.data import BrokenImageError, DataError, eval_transform, load_image, load_splits, train_transform
from resnets.models import get_config

DATA_CFG = get_config("cifar_resnet20").default_pretrained_cfg()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pixels(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# ---------------------------------------------------------------- odd but valid

def test_images_are_decoded_to_rgb(write_image, colors, tmp_path: Path) -> None:
    write_image(tmp_path / "apple/gray.png", colors["apple"], mode="L")
    write_image(tmp_path / "apple/alpha.png", colors["apple"], mode="RGBA")
    write_image(tmp_path / "banana/b.png", colors["banana"], mode="P")
    write_image(tmp_path / "banana/c.png", colors["banana"])
    splits = load_splits("folder", tmp_path, val_fraction=0.5)
    assert [img.mode for img, _ in list(splits.train) + list(splits.val)] == ["RGB"] * 4


def test_valid_odd_images_decode_to_the_right_rgb_pixels(valid: dict[str, Path]) -> None:
    assert (pixels(valid["gray.png"]) == 77).all()
    # Alpha over white: opaque keeps its colour, transparent is white, whatever colour it stored.
    assert pixels(valid["gray_alpha.png"])[0].tolist() == [[100, 100, 100], [255, 255, 255]]
    rgba = pixels(valid["rgba.png"])[0]
    assert rgba[0].tolist() == [10, 20, 30] and rgba[1].tolist() == [255, 255, 255]
    assert np.abs(rgba[2] - 127).max() <= 1  # half-transparent black over white
    assert pixels(valid["bilevel.png"])[0, :, 0].tolist() == [0, 255, 255]
    assert pixels(valid["one_pixel.png"]).tolist() == [[[1, 2, 3]]]
    assert pixels(valid["plain.png"]).tolist() == noise(7, 5).tolist()  # lossless: exact
    assert np.abs(pixels(valid["UPPER.JPG"]) - (200, 10, 10)).max() <= 6


@pytest.mark.parametrize("name", ["gray16.png", "gray16.pgm"])
def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(valid: dict[str, Path], name: str) -> None:
    with Image.open(valid[name]) as raw:
        assert raw.mode in ("I;16", "I")  # what Pillow would clip with convert("RGB")
    got = pixels(valid[name])[0]
    assert (got == got[:, :1]).all()  # grey stays grey
    assert got[:, 0].tolist() == [0, 128, 255, 1, 1]  # 32768 -> 128 (not 255), 300 -> 1 (not 255)


def test_16_bit_rgb_is_scaled_the_same_way(valid: dict[str, Path]) -> None:
    assert pixels(valid["rgb16.png"])[0].tolist() == [[0, 128, 255], [255, 1, 127]]


def test_cmyk_jpeg_becomes_plausible_rgb(valid: dict[str, Path]) -> None:
    with Image.open(valid["cmyk.jpg"]) as raw:
        assert raw.mode == "CMYK"
    r, g, b = pixels(valid["cmyk.jpg"])[4, 4]
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_palette_with_transparency_goes_through_rgba_without_warning(valid: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns "should be converted to RGBA images" on a direct convert
        got = pixels(valid["palette_t.png"])[0]
    assert got[0].tolist() == [255, 255, 255]  # index 0: transparent black -> background
    assert np.abs(got[1] - (127, 255, 127)).max() <= 1  # index 1: green at alpha 128 over white
    assert got[2].tolist() == [0, 0, 255]  # index 2: opaque blue


def test_exif_orientation_is_applied(valid: dict[str, Path]) -> None:
    with Image.open(valid["rotated.jpg"]) as raw:
        assert raw.size == (20, 10)
    got = pixels(valid["rotated.jpg"])
    assert got.shape == (20, 10, 3)  # now 10 wide, 20 high
    assert got[1, -2, 0] > 200 and got[1, -2, 1] < 60  # the red corner moved to the top right
    assert got[1, 1, 0] < 100


@pytest.mark.parametrize("transform", ["train", "eval"])
@pytest.mark.parametrize("name", ["thin.jpg", "one_pixel.png", "rotated.jpg"])
def test_tiny_and_thin_images_go_through_the_transforms(valid: dict[str, Path], name: str, transform: str) -> None:
    make = train_transform if transform == "train" else eval_transform
    for size in (32, 96):  # pad-crop path and RandomResizedCrop path
        out = make(DATA_CFG, size)(load_image(valid[name]))
        assert out.shape == (3, size, size) and torch.isfinite(out).all()


# ---------------------------------------------------------------- broken

@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "text.png",
                                  "float.tif"])
def test_broken_files_raise_one_error_type_with_a_short_reason(broken, name: str) -> None:
    path, word = broken[name]
    with pytest.raises(BrokenImageError) as info:
        load_image(path)
    e = info.value
    assert isinstance(e, DataError) and e.path == str(path) and word in e.reason
    assert str(e).startswith(f"{path}: ") and "\n" not in str(e) and len(e.reason) < 120
    copy = pickle.loads(pickle.dumps(e))  # crosses DataLoader worker processes
    assert (copy.path, copy.reason, str(copy)) == (e.path, e.reason, str(e))


def test_truncated_jpeg_passes_verify_but_not_load(broken) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing imported by resnets may switch it on
    path = broken["truncated.jpg"][0]
    with Image.open(path) as img:
        img.verify()  # Pillow's quick check says fine: only a full decode finds it
    with pytest.raises(BrokenImageError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize("side", [40, 50])  # 1,600 px: Pillow only warns; 2,500 px: Pillow refuses
def test_decompression_bomb_is_broken_and_never_decoded(tmp_path, monkeypatch, side: int) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(noise(side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BrokenImageError, match="decompression bomb"):
            load_image(path)
    assert decoded == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image(path).size == (side, side)
    assert decoded  # the patched load does see real decodes
