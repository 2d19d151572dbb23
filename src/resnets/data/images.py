"""Reading image files: which files count as images, and decoding them the same way everywhere.

Every file either decodes to an 8-bit RGB image or raises `BrokenImageError` with a short reason; there is
no third outcome (no half-decoded grey tail of a truncated JPEG, no clipped 16-bit scan).
"""
from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BrokenImageError
from ..messages import one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Decoders tried on a file, whatever its extension says (JPEG includes phones' multi-picture MPO files). A
# short list keeps files named .jpg away from decoders that have no business here (EPS runs Ghostscript).
FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited over this, as a viewer shows them on a page
# What Pillow raises on a malformed file: its fuzz tests expect OSError (UnidentifiedImageError included),
# SyntaxError, ValueError and NotImplementedError; Image.open itself catches IndexError, TypeError and
# struct.error from its plugins, which load() can raise as well. MemoryError is not here: it may be real.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, NotImplementedError, EOFError, IndexError, TypeError,
                 struct.error)


def is_image_file(path: Path) -> bool:
    """Images by extension, any case; hidden files (.DS_Store, ._foo.jpg from macOS) never count."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; BrokenImageError when it cannot be read or is empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BrokenImageError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if not data:
        raise BrokenImageError(path, "empty file (0 bytes)")
    return data


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to 8-bit RGB, with its EXIF orientation applied; see `decode_image`."""
    return decode_image(read_bytes(path), path)


def decode_image(data: bytes, path: str | Path = "<bytes>") -> Image.Image:
    """Fully decode `data` to 8-bit RGB with its EXIF orientation applied, or raise BrokenImageError.

    `img.load()` decodes every pixel: `Image.verify()` and a lazy open both pass a truncated JPEG, which
    Pillow would later fill with grey (or refuse, mid-epoch). Images above `Image.MAX_IMAGE_PIXELS` are
    refused before decoding: Pillow only warns between 1x and 2x that limit, here both are errors.
    """
    if not data:
        raise BrokenImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BrokenImageError(path, f"decompression bomb: more than {Image.MAX_IMAGE_PIXELS:,} pixels "
                                     f"(PIL.Image.MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise BrokenImageError(path, "not an image (no JPEG, PNG, PPM, BMP, TIFF, WebP or GIF data)") from None
    except DECODE_ERRORS as e:
        raise BrokenImageError(path, f"truncated or corrupt ({one_line(e, 100)})") from None
    try:
        return to_rgb(img)
    except ValueError as e:
        raise BrokenImageError(path, f"unsupported pixel format {img.mode} ({one_line(e, 100)})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image: L, LA, 1, P (with transparency), RGBA, CMYK, YCbCr, and 16-bit grey
    (I;16*, I) scaled to 8 bits. Alpha is composited over `BACKGROUND`. ValueError for other modes (F, LAB)."""
    if img.mode.startswith("I"):
        # 16-bit grey (PNG, PGM, TIFF). convert("RGB") would clip every value above 255 to white; keep the
        # high byte instead, as Pillow itself does for 16-bit RGB PNGs (65535 -> 255, 32768 -> 128).
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
        img = Image.fromarray(values.astype(np.uint8))  # mode L
    elif img.mode == "F":
        raise ValueError("32-bit float pixels have no defined 8-bit scale")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        # Through RGBA: a palette with transparency converted straight to RGB makes Pillow warn, and the
        # colour stored under a transparent pixel is arbitrary (often black, sometimes edit leftovers).
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
