"""Where the commands that use a model write, and the promise they keep: never over a file they read."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..data.walk import list_images
from ..errors import ConfigError
from ..fileio import check_writable
from ..models.weights import resolve_weights

Reads = Iterable[tuple[Path, str]]  # (a file the command reads, what it is to the user: "the weights file")


def beside_weights(weights: str | Path, folder: str) -> Path:
    """`<run folder>/<folder>` for a run (or `save_pretrained`) folder; `<folder>` beside a weights file."""
    path = Path(weights)
    return (path if path.is_dir() else path.parent) / folder


def files_read(weights: str | Path | None = None, inputs: Sequence[str | Path] = ()) -> Reads:
    """The weights file `weights` resolves to, then the images among `inputs` (folders searched).

    A generator: the inputs are listed only if `refuse_overwrite` finds an output that already exists.
    """
    if weights is not None and Path(weights).exists():  # a URL or a published set's name is no file here
        yield resolve_weights(weights), "the weights file"
    for path in list_images(inputs, warn=lambda message: None):  # the command lists them again, and warns then
        yield path, "an input image"


def refuse_overwrite(outputs: Iterable[str | Path], reads: Reads, name: str = "--output",
                     remedy: str = "choose another path") -> None:
    """ConfigError, before any work, when an output would replace a file the command reads.

    The atomic rename of the output would leave no copy of it: a weights file or an input image swapped for a
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


def check_output(output: str | Path, weights: str | Path | None, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse, before any work, an `--output` file that cannot be written, or that is the weights file or an
    input image (the output would take its place)."""
    check_writable(output, "--output")
    refuse_overwrite([output], files_read(weights, inputs))


def _file_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:  # missing, or a parent is not a folder: nothing there to replace
        return None
    return st.st_dev, st.st_ino
