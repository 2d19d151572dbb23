"""Every exception resnets raises for a user's mistake or a file it cannot use. The CLI turns each into one line
on stderr and exit code 2; the API raises them as they are. Anything else that escapes is a bug."""
from __future__ import annotations

from pathlib import Path


class ResnetsError(Exception):
    """Base class: a problem with what the user asked for or gave, not a bug in resnets."""


class UnknownModelError(ResnetsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ResnetsError, ValueError):
    """An argument or option that does not fit the model or command."""


class CheckpointError(ResnetsError):
    """A weights file or training checkpoint that cannot be read, or does not fit the model."""


class DataError(ResnetsError):
    """Data that cannot be used as asked: missing folder, no images, classes that do not fit."""


class BrokenImageError(DataError):
    """A file that does not decode to an image: empty, truncated, not an image, a decompression bomb."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), reason)  # both in args, so it pickles across DataLoader workers
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class TrainingError(ResnetsError):
    """The run cannot go on (e.g. the loss became NaN)."""


class WriteError(ResnetsError, OSError):
    """A file that could not be written (a full disk, a quota, an I/O error): its name and the reason. Still an
    OSError, with the original `errno`, for callers that handle those."""

    def __str__(self) -> str:  # OSError's would show "[Errno 28] ..." once errno is set
        return str(self.args[0]) if self.args else ""


class ExportError(ResnetsError):
    """The exporter failed, or the exported model does not compute what the eager model does."""


class DownloadError(ResnetsError):
    """Weights that could not be fetched or verified: offline, not found, damaged, incomplete."""


class RunStopped(Exception):
    """A run stopped on request (SIGTERM, SIGINT) after saving where it was; not a mistake, so no ResnetsError.
    `exit_code` is the shell's for the signal (128 + its number: 130, 143)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
