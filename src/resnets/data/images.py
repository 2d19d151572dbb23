"""Reading image files: which files count as images, and decoding them the same way everywhere.

Every file either decodes to an 8-bit RGB image or raises `BrokenImageError` with a short reason; there is
no third outcome (no half-decoded grey tail of a truncated JPEG, no clipped 16-bit scan).
"""
from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BrokenImageError, ConfigError
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
# The largest image file read, unless told otherwise (--max-image-mb). Pillow's pixel limit bounds what decodes
# (MAX_IMAGE_PIXELS, 89.5 M): uncompressed 8-bit RGBA or CMYK at that limit is 358 MB, the largest of the
# formats here; a camera's JPEG is under 50 MB and a scanner's TIFF a few hundred. Above this, a file cannot
# be an image that decodes, and reading it whole (a 30 GB sparse file) would only exhaust memory.
MAX_IMAGE_MB = 512
MAX_IMAGE_BYTES = MAX_IMAGE_MB * 2**20
FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def is_image_file(path: Path) -> bool:
    """Images by extension, any case; hidden files (.DS_Store, ._foo.jpg from macOS) never count."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def max_image_bytes(max_image_mb: float | None) -> int:
    """--max-image-mb in bytes (None: `MAX_IMAGE_MB`); ConfigError unless it is a number > 0."""
    mb = MAX_IMAGE_MB if max_image_mb is None else max_image_mb
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 0 < mb < math.inf:
        raise ConfigError(f"max-image-mb must be a number > 0, got {mb!r}")
    return max(1, int(mb * 2**20))


def read_bytes(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The file's bytes; BrokenImageError when it is not a regular file, holds more than `max_bytes`, cannot be
    read or is empty.

    Every image read goes through here, so these checks come before any `open`: opening a FIFO blocks until
    a writer comes (forever, in a class folder), and /dev/zero or a huge sparse file never ends. os.stat
    follows a symlink, so a link is judged by what it points to.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise BrokenImageError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((what for is_kind, what in FILE_KINDS if is_kind(st.st_mode)), "a special file")
        raise BrokenImageError(path, f"not a regular file: {kind}")
    if st.st_size > max_bytes:
        raise BrokenImageError(path, _too_large(st.st_size, max_bytes))
    try:
        with open(path, "rb") as f:
            # Not read(max_bytes + 1) at once: that allocates the whole limit for every file (ten times slower).
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:  # it grew since the stat (or is a /proc file, of size 0): on, bounded
                data += f.read(max_bytes + 1 - len(data))
    except OSError as e:
        raise BrokenImageError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise BrokenImageError(path, _too_large(len(data), max_bytes, "or more"))
    if not data:
        raise BrokenImageError(path, "empty file (0 bytes)")
    return data


def _too_large(size: int, max_bytes: int, more: str = "") -> str:
    def mib(n: int) -> str:
        return f"{n / 2**20:,.1f}".removesuffix(".0")

    return f"too large: {mib(size)} MiB{' ' + more if more else ''}, over the {mib(max_bytes)} MiB of --max-image-mb"


def load_image(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """Decode an image file to 8-bit RGB, with its EXIF orientation applied; see `read_bytes` and `decode_image`."""
    return decode_image(read_bytes(path, max_bytes), path)


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
