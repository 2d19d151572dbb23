"""Reading image files: which files count as images, and decoding them the same way everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from PIL import Image, ImageOps

from ..errors import ResnetsError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ResnetsError):
    """Data that cannot be used as asked: missing folder, no images, classes that do not fit."""


def is_image_file(path: Path) -> bool:
    """Images by extension, any case; hidden files (.DS_Store, ._foo.jpg from macOS) never count."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, with its EXIF orientation applied."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among `paths`; folders are searched recursively, in sorted order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found
