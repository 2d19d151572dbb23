"""`resnets check-data`: decode every file of an image folder on all cores and report what would hurt a run.

Broken files, class counts with empty and imbalanced classes, byte-identical duplicates, and images shared by
train and val (leakage: val accuracy then measures memory, not generalisation).
"""
from __future__ import annotations

import functools
import hashlib
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..device import check_workers, default_workers
from ..errors import BrokenImageError, DataError
from ..messages import counted, printable
from .datasets import class_difference, class_folders, split_folders, split_overlap, too_few_classes
from .images import MAX_IMAGE_BYTES, decode_image, max_image_bytes, read_bytes
from .walk import find_images, require_folder

MAX_IMBALANCE = 10.0  # largest / smallest class above this is reported as a problem
MAX_LISTED = 20  # lines per section of the printed report; the DataReport holds everything


@dataclass
class SplitReport:
    name: str  # "train", "val", "test", or "data" for a folder without a split
    root: str
    class_counts: dict[str, int]  # readable images per class folder, in sorted class order
    unreadable: int = 0

    @property
    def images(self) -> int:
        return sum(self.class_counts.values())

    @property
    def empty_classes(self) -> list[str]:
        return [name for name, n in self.class_counts.items() if n == 0]

    @property
    def imbalance(self) -> float:
        """Largest class / smallest non-empty class (1.0 when balanced; empty classes are reported apart)."""
        counts = [n for n in self.class_counts.values() if n > 0]
        return max(counts) / min(counts) if counts else 1.0


@dataclass
class DataReport:
    root: str
    splits: list[SplitReport]
    broken: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), sorted
    duplicates: list[list[str]] = field(default_factory=list)  # byte-identical readable files within a split
    leaks: list[list[str]] = field(default_factory=list)  # byte-identical files in two or more splits
    class_mismatch: list[str] = field(default_factory=list)  # "val: missing ...; extra ...": not train's classes
    too_few_classes: str | None = None  # the message training refuses the data with: one class only
    max_imbalance: float = MAX_IMBALANCE
    files: int = 0
    workers: int = 1
    seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        """One line per kind of problem found; empty when the data is clean."""
        found = [self.too_few_classes] if self.too_few_classes else []
        if self.broken:
            found.append(counted(len(self.broken), 'unreadable file'))
        for split in self.splits:
            if split.empty_classes:
                found.append(f"{split.name}: {counted(len(split.empty_classes), 'class', 'classes')} without a "
                             f"readable image ({', '.join(split.empty_classes[:5])})")
            if split.imbalance > self.max_imbalance:
                found.append(f"{split.name}: classes imbalanced {split.imbalance:.1f}x "
                             f"(more than {self.max_imbalance:g}x)")
        found += [f"classes differ from train's in {mismatch}" for mismatch in self.class_mismatch]
        if self.duplicates:
            found.append(f"{counted(len(self.duplicates), 'group')} of identical files")
        if self.leaks:
            found.append(f"{counted(len(self.leaks), 'image')} in more than one split (leakage)")
        return found

    def format(self, limit: int = MAX_LISTED) -> str:
        """The report as text; every line escaped by `printable`, so names from the data cannot add lines."""
        lines = [f"{self.root}: {self.files:,} files decoded by {counted(self.workers, 'process', 'processes')} "
                 f"in {self.seconds:.1f} s"]
        for split in self.splits:
            lines += ["", f"{split.name}: {split.root} ({split.images:,} readable images, "
                          f"{counted(len(split.class_counts), 'class', 'classes')})"]
            width = max(len(printable(name)) for name in split.class_counts)
            for name, n in split.class_counts.items():
                lines.append(f"  {printable(name):<{width}}  {n:>8,}{'  EMPTY' if n == 0 else ''}")
            nonempty = {k: v for k, v in split.class_counts.items() if v}
            if len(nonempty) > 1:
                lines.append(f"  imbalance: {split.imbalance:.1f}x ({_extremes(nonempty)})")
        sections = [("unreadable files", [f"{f}: {reason}" for f, reason in self.broken]),
                    ("identical files within a split", [" = ".join(g) for g in self.duplicates]),
                    ("identical files in different splits (leakage)", [" = ".join(g) for g in self.leaks])]
        for title, items in sections:
            if items:
                lines += ["", f"{title}: {len(items):,}"] + [f"  {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit:,} more")
        problems = self.problems
        lines += ["", f"{counted(len(problems), 'problem')}: " + "; ".join(problems) if problems
                  else "no problems found"]
        return "\n".join(map(printable, lines))


def _extremes(counts: dict[str, int]) -> str:
    """The largest and the smallest class with their counts; with all classes equal there are none to name."""
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[big] == counts[small]:
        return "classes are balanced"
    return f"{big} {counts[big]:,} / {small} {counts[small]:,}"


def inspect_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[str, str, str | None]:
    """(path, hash of the bytes, None) for a readable image; (path, hash or "", reason) for a broken one."""
    try:
        data = read_bytes(path, max_bytes)
    except BrokenImageError as e:
        return path, "", e.reason
    digest = hashlib.blake2b(data, digest_size=20).hexdigest()
    try:
        decode_image(data, path)
    except BrokenImageError as e:
        return path, digest, e.reason
    return path, digest, None


def _layout(path: Path, val_dir: Path | None) -> list[tuple[str, Path]]:
    """(split name, folder) pairs: train/ with val/ and test/ where present, or --val-dir, or the folder alone.

    Splits that are one folder, or one inside another, are refused as training refuses them: each file
    would belong to two splits, and the report would count it in one and leave the other empty.
    """
    found = split_folders(path)
    train = found.get("train", path)
    if val_dir is not None:
        require_folder(val_dir)
        layout = [("train", train), ("val", val_dir)]
    elif "train" in found:
        layout = list(found.items())
    else:
        layout = [("data", path)]
    if overlap := split_overlap(layout):
        raise DataError(overlap)
    return layout


def _inspect_all(inspect: Any, paths: list[str], workers: int) -> list[Any]:
    if workers <= 1 or len(paths) < 2 * workers:
        return list(map(inspect, paths))
    # Chunks amortise the inter-process round trip; 4 per worker keeps the cores busy to the end.
    chunk = max(1, min(256, len(paths) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(inspect, paths, chunksize=chunk))


def check_data(path: str | Path, workers: int | None = None, val_dir: str | Path | None = None,
               max_imbalance: float = MAX_IMBALANCE, max_image_mb: float | None = None) -> DataReport:
    """Fully decode every image of an ImageFolder (or of its train/, val/ and test/ splits) and report.

    Args:
        path: a folder of class folders, or one holding train/ and val/ and/or test/.
        workers: decoding processes (default: every core); 0 or 1 decode in this process.
        val_dir: a separate val folder to check for leakage against `path`.
        max_imbalance: largest over smallest class above this counts as a problem.
        max_image_mb: larger files (default: `MAX_IMAGE_MB`), and files that are not regular files (a FIFO, a
            device), are reported unreadable without being read, as training would skip them.

    Raises DataError for a missing folder or one without class subfolders.
    """
    check_workers(workers)
    inspect = functools.partial(inspect_file, max_bytes=max_image_bytes(max_image_mb))
    workers = default_workers(None) if workers is None else workers
    start = time.perf_counter()
    layout = _layout(Path(path).expanduser(), Path(val_dir).expanduser() if val_dir is not None else None)
    owner: dict[str, tuple[str, str]] = {}  # file -> (split, class)
    splits = []
    for name, root in layout:
        classes = class_folders(root)
        # The files training would read: the same walk, so the counts here are the run's counts.
        for file, label in find_images(root, {cls: i for i, cls in enumerate(classes)}):
            owner[file] = (name, classes[label])
        splits.append(SplitReport(name, str(root), dict.fromkeys(classes, 0)))
    paths = list(owner)
    results = _inspect_all(inspect, paths, workers)
    by_split = {s.name: s for s in splits}
    broken, by_digest = [], defaultdict(list)
    for file, digest, reason in results:
        split, cls = owner[file]
        if reason is None:
            by_split[split].class_counts[cls] += 1
            by_digest[digest].append(file)
        else:
            by_split[split].unreadable += 1
            broken.append((file, reason))
    duplicates, leaks = [], []
    for files in by_digest.values():
        if len(files) < 2:
            continue
        in_split = defaultdict(list)
        for f in files:
            in_split[owner[f][0]].append(f)
        duplicates += [sorted(group) for group in in_split.values() if len(group) > 1]
        if len(in_split) > 1:
            leaks.append(sorted(files))
    mismatch = [f"{split.name}: {difference}" for split in splits[1:]
                if (difference := class_difference(list(splits[0].class_counts), list(split.class_counts)))]
    return DataReport(str(path), splits, sorted(broken), sorted(duplicates), sorted(leaks), mismatch,
                      too_few_classes=too_few_classes(list(splits[0].class_counts), splits[0].root),
                      max_imbalance=max_imbalance, files=len(paths),
                      workers=workers if workers > 1 and len(paths) >= 2 * workers else 1,
                      seconds=time.perf_counter() - start)
