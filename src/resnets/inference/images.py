"""Images one by one for the commands that use a model: read, transformed, batched; a broken file skipped."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..data.images import MAX_IMAGE_BYTES, load_image
from ..data.walk import list_images
from ..errors import BrokenImageError, ConfigError, DataError
from ..messages import Warn, listed, warn


def read_images(paths: Sequence[str | Path], transform: Callable, warn: Warn = warn,
                max_bytes: int = MAX_IMAGE_BYTES) -> Iterator[tuple[Path, torch.Tensor]]:
    """(path, transformed image) for each image among `paths` (folders searched recursively).

    A file that cannot be decoded, is not a regular file (a FIFO, a device) or holds more than `max_bytes` is
    skipped with a warning naming it and the reason, rather than ending a long run; the caller decides what
    to do when nothing is left (`DataError` in `require_some`).
    """
    for path in list_images(paths):
        try:
            image = load_image(path, max_bytes)
        except BrokenImageError as e:
            warn(f"skipped {path}: {e.reason}")
            continue
        yield path, transform(image)


def batched(items: Iterator[tuple[Path, torch.Tensor]], batch_size: int,
            ) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Group (path, image) pairs into (paths, (B, C, H, W) batch)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    paths: list[Path] = []
    images: list[torch.Tensor] = []
    for path, image in items:
        paths.append(path)
        images.append(image)
        if len(paths) == batch_size:
            yield paths, torch.stack(images)
            paths, images = [], []
    if paths:
        yield paths, torch.stack(images)


def require_some(count: int, paths: Sequence[str | Path]) -> None:
    if count == 0:
        raise DataError(f"no readable images in {listed(list(paths), 3)}")
