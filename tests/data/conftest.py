"""Shared fixtures for the data tests: folders of solid-colour images, and a corpus of odd and broken files.

The images are real PNG/JPEG files written into tmp_path, one solid colour per class, so a test can tell
from the pixels alone whether an item carries the right label. The corpus is generated with PIL and numpy,
so each odd or broken case is visible here.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

COLORS = {"apple": (220, 20, 20), "banana": (240, 220, 30), "cherry": (90, 0, 160), "durian": (20, 160, 40)}


# ---------------------------------------------------------------- folders of solid-colour images

def _write_image(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).convert(mode).save(path)  # format from the suffix: PNG or JPEG
    return path


def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    """<root>/<class>/<i>.png|jpg, alternating PNG and JPEG, in the class's colour."""
    for name, count in counts.items():
        for i in range(count):
            _write_image(root / name / f"{name}_{i:02d}.{'png' if i % 2 else 'jpg'}", COLORS[name])
    return root


def _class_of(image: Image.Image) -> str:
    """The class whose colour the image is (JPEG shifts colours a little, so: the nearest one)."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda name: np.abs(mean - COLORS[name]).sum())


def _assert_labels_match_pixels(dataset, class_names: list[str]) -> None:
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert isinstance(label, int)
        assert _class_of(image) == class_names[label]


@pytest.fixture
def colors() -> dict[str, tuple[int, int, int]]:
    """The colour of each class: `write_image(path, colors["apple"])` writes an apple."""
    return COLORS


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """`write_image(path, color, mode="RGB")`: a 20 x 16 image of one colour, PNG or JPEG by its suffix."""
    return _write_image


@pytest.fixture
def make_folder() -> Callable[[Path, dict[str, int]], Path]:
    """`make_folder(root, {"apple": 3, ...})`: an ImageFolder of PNG and JPEG files in each class's colour."""
    return _make_folder


@pytest.fixture
def assert_labels_match_pixels() -> Callable[..., None]:
    """`assert_labels_match_pixels(dataset, class_names)`: every item's label is the class its colour says."""
    return _assert_labels_match_pixels


# ---------------------------------------------------------------- a corpus of odd and broken files

def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_16bit_rgb(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow cannot save one."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _truncated(path: Path, source: Image.Image, fraction: float = 0.6) -> Path:
    """The first `fraction` of a real file's bytes: the header parses, the pixels run out."""
    source.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _exif_rotated(path: Path) -> Path:
    """20 wide x 10 high, red top-left corner, EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = np.full((10, 20, 3), 40, np.uint8)
    img[:3, :3] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(path, quality=95, exif=exif)
    return path


def _palette_with_transparency(path: Path) -> Path:
    """Palette PNG whose transparency is a byte string (index 0 fully transparent, 1 half, 2 opaque)."""
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    img.save(path, transparency=b"\x00\x80")
    return path


def _write_valid(folder: Path) -> dict[str, Path]:
    """One file per odd-but-valid case, each with known pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {name: folder / name for name in (
        "gray.png", "gray_alpha.png", "rgba.png", "palette_t.png", "gray16.png", "gray16.pgm", "rgb16.png",
        "cmyk.jpg", "bilevel.png", "one_pixel.png", "thin.jpg", "UPPER.JPG", "rotated.jpg", "plain.png")}
    Image.fromarray(np.full((6, 6), 77, np.uint8)).save(f["gray.png"])
    Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA").save(f["gray_alpha.png"])
    Image.fromarray(np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128]]], np.uint8), "RGBA").save(f["rgba.png"])
    _palette_with_transparency(f["palette_t.png"])
    gray16 = np.array([[0, 32768, 65535, 257, 300]], np.uint16)  # 300: what convert("RGB") would clip to 255
    Image.fromarray(gray16).save(f["gray16.png"])
    Image.fromarray(gray16).save(f["gray16.pgm"])
    _png_16bit_rgb(f["rgb16.png"], np.array([[[0, 32768, 65535], [65535, 300, 32767]]], np.uint16))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(f["cmyk.jpg"], quality=95)  # red
    Image.fromarray(np.array([[0, 1, 1]], bool)).save(f["bilevel.png"])
    Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)).save(f["one_pixel.png"])
    Image.fromarray(_noise(1, 500)).save(f["thin.jpg"])
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).save(f["UPPER.JPG"], quality=95)
    _exif_rotated(f["rotated.jpg"])
    Image.fromarray(_noise(7, 5)).save(f["plain.png"])
    return f


def _write_broken(folder: Path) -> dict[str, tuple[Path, str]]:
    """One file per broken case, with a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    _truncated(folder / "truncated.jpg", Image.fromarray(_noise(64, 64)))
    _truncated(folder / "truncated.png", Image.fromarray(_noise(64, 64)))
    (folder / "text.jpg").write_text("these are notes, not a photo\n")
    (folder / "text.png").write_text("<html>a download error page</html>\n")
    Image.fromarray(np.ones((4, 4), np.float32)).save(folder / "float.tif")
    return {"empty.jpg": (folder / "empty.jpg", "empty"), "truncated.jpg": (folder / "truncated.jpg", "truncated"),
            "truncated.png": (folder / "truncated.png", "truncated"), "text.jpg": (folder / "text.jpg", "not an image"),
            "text.png": (folder / "text.png", "not an image"), "float.tif": (folder / "float.tif", "unsupported")}


@pytest.fixture(scope="session")
def write_valid() -> Callable[[Path], dict[str, Path]]:
    """`write_valid(folder)`: one file per odd-but-valid case, each with known pixels."""
    return _write_valid


@pytest.fixture(scope="session")
def write_broken() -> Callable[[Path], dict[str, tuple[Path, str]]]:
    """`write_broken(folder)`: one file per broken case, with a word its reason must contain."""
    return _write_broken


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    return _write_valid(tmp_path_factory.mktemp("valid"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return _write_broken(tmp_path_factory.mktemp("broken"))
