"""Labelled image datasets split into train and val: image folders, a CSV list, scikit-learn digits, CIFAR.

`load_splits` is what training calls; `load_eval_set` is what `resnets eval` calls with a model's
class names. Every problem with the data is a one-line `DataError` raised here, before training starts,
rather than a stack trace from a DataLoader worker an epoch later.
"""
from __future__ import annotations

import csv
import functools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from ..errors import BrokenImageError, DataError
from ..messages import Warn, counted, listed, warn
from .bad_files import Unreadable
from .images import MAX_IMAGE_BYTES, is_image_file, load_image, max_image_bytes
from .walk import find_images, require_folder

Transform = Callable[[Any], Any] | None
DIGITS_SIZE = 32  # scikit-learn's 8x8 digits upscaled to CIFAR's size, so the CIFAR ResNets run on them as-is
CIFAR = {"cifar10": (datasets.CIFAR10, "CIFAR-10"), "cifar100": (datasets.CIFAR100, "CIFAR-100")}
SPLITS = ("train", "val", "test")  # subfolders of an image folder that are splits, not classes


@dataclass
class DataSplits:
    train: Dataset  # items: (transformed image, int label)
    val: Dataset
    class_names: list[str]
    train_labels: list[int]  # label of every train item, in order: for class weights and balanced sampling
    val_labels: list[int]
    description: str  # one line for logs, e.g. "ImageFolder data/pets: 1,234 train / 309 val, 5 classes (...)"


class ImageFiles(Dataset):
    """(image, label) from a list of (path, label), decoded by `load_image` (RGB, EXIF orientation applied).

    A file that does not decode, is not a regular file or holds more than `max_bytes` gives an `Unreadable`
    marker instead, for `collate_skipping` to drop.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Transform = None,
                 max_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]  # ImageFolder's name for the labels
        self.transform = transform
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | Unreadable:
        path, label = self.samples[index]
        try:
            image = load_image(path, self.max_bytes)
        except BrokenImageError as e:
            return Unreadable(str(path), e.reason)
        return (self.transform(image) if self.transform is not None else image), label


class TensorImages(Dataset):
    """(image, label) from in-memory uint8 images (N, C, H, W)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], transform: Transform = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 (N, C, H, W) images and N labels, got {images.dtype} "
                             f"{tuple(images.shape)} and {len(labels)} labels")
        self.images = images
        self.targets = [int(label) for label in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]  # (C, H, W) uint8
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def class_folders(root: Path) -> list[str]:
    """Sorted class folder names of an ImageFolder root; hidden ones (.ipynb_checkpoints) are not classes."""
    require_folder(root)
    try:
        names = find_classes(root)[0]
    except FileNotFoundError:  # torchvision's "Couldn't find any class folder"
        names = []
    names = [name for name in names if not name.startswith(".")]
    if not names:
        raise DataError(f"{root} has no class subfolders (expected {root}/<class name>/<image files>)")
    return names


def scan_image_folder(root: Path, class_to_idx: dict[str, int] | None = None,
                      warn: Warn = warn) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, label) samples of an ImageFolder root: <root>/<class>/**/<image>.

    Labels follow `class_to_idx`, by default the sorted class folders. Files are found by `find_images`.
    A class folder with no images is an error (that class would get no training signal and a meaningless
    val accuracy).
    """
    if class_to_idx is None:
        class_to_idx = {name: i for i, name in enumerate(class_folders(root))}
    samples = find_images(root, class_to_idx, warn)
    if not samples:
        raise DataError(f"no images in {root} (looked in {counted(len(class_to_idx), 'class folder')})")
    found = {label for _, label in samples}
    empty = [name for name, label in class_to_idx.items() if label not in found]
    if empty:
        raise DataError(f"class folder(s) with no images in {root}: {listed(empty)}")
    class_names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    return class_names, samples


def class_difference(model_names: Sequence[str], data_names: Sequence[str], ordered: bool = False) -> str | None:
    """How the data's classes differ from a model's, for an error message; None when they are the same.

    `ordered`: the same order too, as the rows of a classifier head trained on `model_names` need.
    """
    missing = [name for name in model_names if name not in data_names]
    extra = [name for name in data_names if name not in model_names]
    if missing or extra:
        return f"missing {listed(missing) or '-'}; extra {listed(extra) or '-'}"
    if ordered and list(model_names) != list(data_names):
        return f"the same classes in another order ({listed(list(model_names))} vs {listed(list(data_names))})"
    return None


def stratified_split(labels: Sequence[int], class_names: Sequence[str], val_fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of item indices into (train, val), each class divided by `val_fraction`.

    Per class rather than sklearn's train_test_split(stratify=...): that one may give a small class no val
    item at all, silently, and fails outright when val is smaller than the number of classes. Here every
    class with 2+ items lands in both halves (its share rounded, kept within 1..n-1).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DataError(f"class {name!r} has {counted(len(members), 'image')}: too few to split into train "
                            f"and val (needs at least 2); add images or give explicit train/ and val/ folders")
        n_val = min(max(int(len(members) * val_fraction + 0.5), 1), len(members) - 1)
        shuffled = rng.permutation(members)
        val += shuffled[:n_val].tolist()
        train += shuffled[n_val:].tolist()
    return sorted(train), sorted(val)


def too_few_classes(class_names: Sequence[str], where: str) -> str | None:
    """Why these classes cannot train a classifier, or None. Training refuses them; check-data reports it."""
    if len(class_names) < 2:
        return f"{where} has only one class ({listed(list(class_names))}); classification needs at least 2"
    return None


def _check_classes(class_names: Sequence[str], where: str) -> None:
    if problem := too_few_classes(class_names, where):
        raise DataError(problem)


def split_overlap(splits: Sequence[tuple[str, Path]]) -> str | None:
    """Why these (name, folder) splits are not apart, or None: two are one folder, or one holds another
    (symlinks resolved). The inner one's images would then be in both splits, and val accuracy would
    measure memory, not generalisation."""
    resolved = [(f"{name} folder {folder}", Path(os.path.realpath(folder))) for name, folder in splits]
    for i, (first, first_real) in enumerate(resolved):
        for second, second_real in resolved[i + 1:]:
            if first_real == second_real:
                return f"{first} and {second} are the same folder: its images would be in both (leakage)"
            if first_real in second_real.parents:
                return f"{second} is inside {first}: its images would be in both (leakage)"
            if second_real in first_real.parents:
                return f"{first} is inside {second}: its images would be in both (leakage)"
    return None


def _split_info(val_fraction: float, seed: int) -> str:
    val_pct = round(100 * val_fraction)
    return f"split {100 - val_pct}/{val_pct}, seed {seed}"


def _summary(name: str, train: Sequence[int], val: Sequence[int], class_names: Sequence[str], how: str) -> str:
    return f"{name}: {len(train):,} train / {len(val):,} val, {len(class_names)} classes ({how})"


def _splits(train: ImageFiles | TensorImages, val: ImageFiles | TensorImages, class_names: list[str],
            description: str) -> DataSplits:
    return DataSplits(train, val, class_names, list(train.targets), list(val.targets), description)


def _split_samples(name: str, class_names: list[str], samples: list[tuple[str, int]], val_fraction: float,
                   seed: int, train_transform: Transform, eval_transform: Transform, max_bytes: int) -> DataSplits:
    labels = [label for _, label in samples]
    train_idx, val_idx = stratified_split(labels, class_names, val_fraction, seed)
    # Two datasets over one file list: each half needs its own transform (augment train, not val).
    train = ImageFiles([samples[i] for i in train_idx], train_transform, max_bytes)
    val = ImageFiles([samples[i] for i in val_idx], eval_transform, max_bytes)
    return _splits(train, val, class_names,
                   _summary(name, train_idx, val_idx, class_names, _split_info(val_fraction, seed)))


def split_folders(root: Path) -> dict[str, Path]:
    """The split subfolders an image folder has, of train/, val/ and test/, in that order. What each command
    makes of them: training takes train/ with the first held-out one (or splits train/, or the folder itself),
    eval the first held-out one (or the folder), check-data all of them when train/ is there."""
    require_folder(root, "data_dir")
    return {name: root / name for name in SPLITS if (root / name).is_dir()}


def held_out(splits: dict[str, Path]) -> Path | None:
    """The val/ folder, else the test/ folder, else None."""
    return splits.get("val") or splits.get("test")


def _folder_splits(data_dir: Path, val_fraction: float, seed: int, train_transform: Transform,
                   eval_transform: Transform, download: bool, max_bytes: int) -> DataSplits:
    found = split_folders(data_dir)
    val_dir = held_out(found)
    if "train" in found and val_dir is not None:
        if overlap := split_overlap([("train", data_dir / "train"), (val_dir.name, val_dir)]):
            raise DataError(overlap)  # e.g. val/ a symlink to train/
        class_names, train_samples = scan_image_folder(data_dir / "train")
        val_names, val_samples = scan_image_folder(val_dir)
        if val_names != class_names:
            only_train = sorted(set(class_names) - set(val_names)) or ["-"]
            only_val = sorted(set(val_names) - set(class_names)) or ["-"]
            raise DataError(f"{data_dir / 'train'} and {val_dir} have different classes: only in train: "
                            f"{listed(only_train)}; only in {val_dir.name}: {listed(only_val)}")
        _check_classes(class_names, str(data_dir / "train"))
        train = ImageFiles(train_samples, train_transform, max_bytes)
        val = ImageFiles(val_samples, eval_transform, max_bytes)
        return _splits(train, val, class_names, _summary(f"ImageFolder {data_dir}", train_samples, val_samples,
                                                         class_names, f"train/ and {val_dir.name}/ folders"))
    # A lone train/ folder would otherwise become a class called "train": split it instead.
    root = found.get("train", data_dir)
    class_names, samples = scan_image_folder(root)
    _check_classes(class_names, str(root))
    return _split_samples(f"ImageFolder {root}", class_names, samples, val_fraction, seed,
                          train_transform, eval_transform, max_bytes)


def _read_csv(csv_path: Path) -> list[tuple[str, str]]:
    """(file, label) rows of a CSV with header `file,label`; files relative to the CSV's folder or absolute."""
    if csv_path.is_dir():
        raise DataError(f"{csv_path} is a folder; the csv dataset needs a CSV file with columns file,label")
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate the BOM that Excel writes
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [col for col in ("file", "label") if col not in header]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                            f"(header is {','.join(header) or 'empty'}; expected file,label)")
        reader.fieldnames = header
        rows = []
        for row in reader:
            file, label = (row["file"] or "").strip(), (row["label"] or "").strip()
            if not file or not label:
                raise DataError(f"{csv_path} line {reader.line_num}: empty file or label")
            rows.append((str(csv_path.parent / file), label))  # an absolute `file` replaces the folder
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    return rows


def _csv_splits(data_dir: Path, val_fraction: float, seed: int, train_transform: Transform,
                eval_transform: Transform, download: bool, max_bytes: int) -> DataSplits:
    rows = _read_csv(data_dir)
    # exists, not is_file: a FIFO or a device listed is skipped and listed with its reason, like a broken image
    not_found = [file for file, _ in rows if not Path(file).exists()]
    if not_found:
        raise DataError(f"{data_dir}: {counted(len(not_found), 'listed file')} not found: {listed(not_found)}")
    not_images = [file for file, _ in rows if not is_image_file(Path(file))]
    if not_images:
        raise DataError(f"{data_dir}: listed files that are not images: {listed(not_images)}")
    repeated = [file for file, times in Counter(file for file, _ in rows).items() if times > 1]
    if repeated:  # a file listed twice could land in both train and val
        raise DataError(f"{data_dir}: files listed more than once: {listed(repeated)}")
    class_names = sorted({label for _, label in rows})
    _check_classes(class_names, str(data_dir))
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples = [(file, class_to_idx[label]) for file, label in rows]
    return _split_samples(f"CSV {data_dir}", class_names, samples, val_fraction, seed,
                          train_transform, eval_transform, max_bytes)


def digits_images() -> tuple[torch.Tensor, list[int]]:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, 3, 32, 32) images, and their labels 0..9."""
    from sklearn.datasets import load_digits  # ships with scikit-learn (no download); a second to import

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)  # (N, 8, 8), ink 0..16
    images = v2.functional.resize(images[:, None], [DIGITS_SIZE, DIGITS_SIZE],
                                  interpolation=v2.InterpolationMode.BILINEAR, antialias=True)  # (N, 1, 32, 32)
    return images.expand(-1, 3, -1, -1).contiguous(), digits.target.tolist()


def _digits_splits(data_dir: Path | None, val_fraction: float, seed: int, train_transform: Transform,
                   eval_transform: Transform, download: bool, max_bytes: int) -> DataSplits:
    images, labels = digits_images()
    class_names = [str(d) for d in range(10)]
    train_idx, val_idx = stratified_split(labels, class_names, val_fraction, seed)
    train = TensorImages(images[train_idx], [labels[i] for i in train_idx], train_transform)
    val = TensorImages(images[val_idx], [labels[i] for i in val_idx], eval_transform)
    return _splits(train, val, class_names, _summary("scikit-learn digits", train_idx, val_idx, class_names,
                                                     _split_info(val_fraction, seed)))


def _cifar_splits(name: str, data_dir: Path, val_fraction: float, seed: int, train_transform: Transform,
                  eval_transform: Transform, download: bool, max_bytes: int) -> DataSplits:
    cifar, title = CIFAR[name]
    root = data_dir.parent if data_dir.name == cifar.base_folder else data_dir  # accept either folder
    try:
        train = cifar(root, train=True, transform=train_transform, download=download)
        val = cifar(root, train=False, transform=eval_transform)
    except RuntimeError as e:  # torchvision's "not found or corrupted", from its md5 checks
        hint = "" if download else "; download them with download=True"
        raise DataError(f"no usable {title} python batches in {root / cifar.base_folder} "
                        f"(missing or corrupted){hint}") from e
    except OSError as e:  # no network, no permission, disk full
        raise DataError(f"could not load {title} into {root}: {e}") from e
    return DataSplits(train, val, list(train.classes), list(train.targets), list(val.targets),
                      _summary(f"{title} {root}", train.targets, val.targets, train.classes,
                               "official train/test split"))


LOADERS: dict[str, Callable[..., DataSplits]] = {
    "folder": _folder_splits,
    "csv": _csv_splits,
    "digits": _digits_splits,
    **{name: functools.partial(_cifar_splits, name) for name in CIFAR},
}
DATASETS = tuple(LOADERS)  # what --dataset takes
NEEDS_DATA_DIR = {"folder": "an ImageFolder root", "csv": "a CSV file with columns file,label",
                  "cifar10": "the folder holding cifar-10-batches-py",
                  "cifar100": "the folder holding cifar-100-python"}


def load_splits(dataset: str = "folder", data_dir: str | Path | None = None, *, val_fraction: float = 0.2,
                seed: int = 0, train_transform: Transform = None, eval_transform: Transform = None,
                download: bool = False, max_image_mb: float | None = None) -> DataSplits:
    """Train and val datasets with their labels and class names.

    Args:
        dataset: "folder", "csv", "digits", "cifar10" or "cifar100".
        data_dir: an ImageFolder root (with train/ and val/ or test/ subfolders used as they are, else split),
            a CSV file, or the folder holding the CIFAR batches; not used by "digits".
        val_fraction: share of each class held out for val when the data has no split of its own.
        seed: makes the split reproducible; a different seed gives a different split.
        train_transform, eval_transform: applied to train and val items (PIL images, or uint8 tensors for
            digits); None leaves items as they are.
        download: fetch CIFAR if it is missing.
        max_image_mb: image files larger than this many MiB (default: `MAX_IMAGE_MB`), and files that are not
            regular files (a FIFO, a device), are unreadable: skipped and listed, never read.
    """
    if dataset not in LOADERS:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(LOADERS)}")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if data_dir is None and dataset in NEEDS_DATA_DIR:
        raise DataError(f"dataset {dataset!r} needs data_dir: {NEEDS_DATA_DIR[dataset]}")
    return LOADERS[dataset](None if data_dir is None else Path(data_dir).expanduser(), val_fraction, seed,
                            train_transform, eval_transform, download, max_image_bytes(max_image_mb))


def load_eval_set(data_dir: str | Path, transform: Transform, class_names: list[str] | None = None,
                  max_image_mb: float | None = None) -> tuple[Dataset, list[int], list[str]]:
    """An ImageFolder to evaluate on: data_dir/val, else data_dir/test, else data_dir itself.

    With `class_names` (a model's), the folder's classes must be exactly those, and labels follow
    their order, which need not be sorted (CIFAR's is not). `max_image_mb` as in `load_splits`.
    """
    max_bytes = max_image_bytes(max_image_mb)
    data_dir = Path(data_dir).expanduser()
    root = held_out(split_folders(data_dir)) or data_dir
    class_to_idx = None
    if class_names is not None:
        difference = class_difference(class_names, class_folders(root))
        if difference:
            raise DataError(f"classes in {root} differ from the model's: {difference}")
        class_to_idx = {name: i for i, name in enumerate(class_names)}
    names, samples = scan_image_folder(root, class_to_idx)
    dataset = ImageFiles(samples, transform, max_bytes)
    return dataset, dataset.targets, names
