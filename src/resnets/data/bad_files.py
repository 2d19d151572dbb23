"""Unreadable files while training or evaluating: dropped from their batch, listed, and counted.

A broken file is never replaced by another sample (what a `__getitem__` that retries the next index does):
that would train on a duplicate without saying so, and hide how much of the data is gone. Instead the
dataset returns an `Unreadable` marker, `collate_skipping` takes markers out of the batch and passes them
along with it (DataLoader workers are separate processes: the batch is the one channel back), and
`SkipUnreadable` hands the loop plain (images, labels) batches while `BadFiles` collects the markers in the
main process, writes them to bad_files.csv and stops the run beyond a set share.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, default_collate

from ..errors import DataError
from ..fileio import atomic_write_csv, csv_value
from ..messages import Warn, counted, warn

BAD_FILES_CSV = "bad_files.csv"


@dataclass(frozen=True)
class Unreadable:
    """What a dataset returns in place of (image, label) for a file that does not decode."""

    file: str
    reason: str


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[Unreadable]]:
    """default_collate of the readable items, plus the `Unreadable` markers; empty tensors if none is left."""
    broken = [item for item in batch if isinstance(item, Unreadable)]
    good = [item for item in batch if not isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), broken
    images, labels = default_collate(good)
    return images, labels, broken


class BadFiles:
    """Unreadable files met so far, with their reasons.

    Args:
        total: how many files the run reads (train + val); the share of broken ones is taken of this.
        max_fraction: more than this share broken stops the run with DataError (after writing the CSV).
        csv_path: where the list goes (columns file,reason); may be set later, once the run has a folder.
    """

    def __init__(self, total: int, max_fraction: float, csv_path: str | Path | None = None,
                 warn: Warn = warn) -> None:
        if not 0.0 <= max_fraction < 1.0:
            raise DataError(f"max_bad_fraction must be in [0, 1), got {max_fraction}")
        self.total, self.max_fraction, self.warn = total, max_fraction, warn
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.reasons: dict[str, str] = {}
        self._reported = 0

    def __len__(self) -> int:
        return len(self.reasons)

    def attach(self, csv_path: str | Path) -> None:
        """Write to `csv_path` from now on, starting from the files it already lists (a resumed run's)."""
        self.csv_path = Path(csv_path)
        if self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    if row.get("file"):
                        self.reasons.setdefault(csv_value(row["file"]), csv_value(row.get("reason") or ""))
            self._reported = len(self.reasons)

    def add(self, broken: Iterable[Unreadable]) -> None:
        for item in broken:
            self.reasons.setdefault(item.file, item.reason)
        if len(self.reasons) > self.max_fraction * self.total:
            # Stop as soon as the share is certain to be exceeded, not after a wasted epoch.
            self.write()
            where = f"; they are listed in {self.csv_path}" if self.csv_path else ""
            raise DataError(f"{len(self.reasons):,} of {self.total:,} images are unreadable "
                            f"({100 * len(self.reasons) / max(self.total, 1):.1f}%, more than max_bad_fraction "
                            f"{self.max_fraction:g}){where}; `resnets check-data` lists every broken file")

    def write(self) -> None:
        if self.csv_path is None or not self.reasons:
            return
        atomic_write_csv(self.csv_path, [("file", "reason"), *sorted(self.reasons.items())])

    def report(self) -> None:
        """Write the list and warn in one line, if unreadable files were found since the last report."""
        new = len(self.reasons) - self._reported
        if new <= 0:
            return
        self.write()
        what, total = ("more unreadable image", f", {len(self.reasons):,} in all") if self._reported else (
            "unreadable image", "")
        where = f" (see {self.csv_path})" if self.csv_path else ""
        self.warn(f"skipped {counted(new, what)}{total}{where}")
        self._reported = len(self.reasons)


class SkipUnreadable:
    """A DataLoader collated by `collate_skipping`, iterated as plain (images, labels) batches.

    Unreadable files go to `bad_files`. A batch with nothing readable left is dropped, or with
    `keep_empty` yielded as empty tensors: a training loop that counts batches to resume mid-epoch must
    see it, and skip it (BatchNorm on 0 samples would write NaN into its running statistics).
    """

    def __init__(self, loader: DataLoader, bad_files: BadFiles, keep_empty: bool = False) -> None:
        self.loader, self.bad_files, self.keep_empty = loader, bad_files, keep_empty

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def yields_empty_batches(self) -> bool:
        return self.keep_empty

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, broken in self.loader:
            if broken:
                self.bad_files.add(broken)
            if len(labels) or self.keep_empty:
                yield images, labels

    def __getattr__(self, name: str) -> Any:  # dataset, sampler, batch_size, ... as the DataLoader has them
        if name in ("loader", "bad_files", "keep_empty"):  # not set yet (a half-built copy): no endless recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
