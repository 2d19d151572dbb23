"""What the task commands share: picking a device, reading images one by one, naming classes, and never
writing over a file the command reads."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..data import BrokenImageError, DataError, list_images, load_image
from ..errors import ConfigError

Warn = Callable[[str], None]
Reads = Iterable[tuple[Path, str]]  # (a file the command reads, what it is to the user: "the checkpoint")


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


def files_read(checkpoint: str | Path | None = None, inputs: Sequence[str | Path] = ()) -> Reads:
    """The weights file `checkpoint` resolves to, then the images among `inputs` (folders searched).

    A generator: the inputs are listed only if `refuse_overwrite` finds an output that already exists.
    """
    from ..models.weights import resolve_checkpoint

    if checkpoint is not None:
        yield resolve_checkpoint(checkpoint), "the checkpoint"
    for path in list_images(inputs, warn=lambda message: None):  # the command lists them again, and warns then
        yield path, "an input image"


def refuse_overwrite(outputs: Iterable[str | Path], reads: Reads, name: str = "--output",
                     remedy: str = "choose another path") -> None:
    """ConfigError, before any work, when an output would replace a file the command reads.

    The atomic rename of the output would leave no copy of it: a checkpoint or an input image swapped for a
    CSV or a PNG. Files are compared by what a path names after symlinks, `.` and `..` (device and inode,
    as `os.path.samefile` does): `stat` costs a tenth of `os.path.realpath` over 50,000 images, and it also
    sees a case-insensitive file system's `Best.safetensors` as `best.safetensors`. A new output replaces
    nothing, so the files read are not even listed then.
    """
    existing = {key: Path(path) for path in outputs if (key := _file_key(path)) is not None}
    if not existing:
        return
    for path, what in reads:
        output = existing.get(_file_key(path))
        if output is not None:
            same = "" if os.path.normpath(output) == os.path.normpath(path) else f" ({path})"
            raise ConfigError(f"{name} {output} is {what} this command reads{same}; {remedy}")


def _file_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:  # missing, or a parent is not a folder: nothing there to replace
        return None
    return st.st_dev, st.st_ino


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
