"""What the task commands share: picking a device, reading images one by one, naming classes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..data import BrokenImageError, DataError, list_images, load_image
from ..errors import ConfigError

Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def resolve_device(device: str | None) -> torch.device:
    """None or "auto" picks CUDA when there is a GPU, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda asked for, but no CUDA GPU is available here")
    return dev


def beside_checkpoint(checkpoint: str | Path, folder: str) -> Path:
    """`<run dir>/<folder>` for a run directory; `<folder>` beside a weights file."""
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / folder


def class_names_of(model: nn.Module) -> list[str]:
    """The checkpoint's class names, or "0", "1", ... when it carries none (e.g. a bare state dict)."""
    names = getattr(model, "class_names", None)
    return [str(n) for n in names] if names else [str(i) for i in range(model.num_classes)]


def read_images(paths: Sequence[str | Path], transform: Callable, warn: Warn = warn_stderr,
                ) -> Iterator[tuple[Path, torch.Tensor]]:
    """(path, transformed image) for each image among `paths` (folders searched recursively).

    A file that cannot be decoded is skipped with a warning naming it and the reason, rather than ending a
    long run; the caller decides what to do when nothing is left (`DataError` in `require_some`).
    """
    for path in list_images(paths):
        try:
            image = load_image(path)
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
        shown = ", ".join(map(str, paths[:3])) + (", ..." if len(paths) > 3 else "")
        raise DataError(f"no readable images in {shown}")
