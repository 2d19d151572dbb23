"""load_splits on the other kinds of dataset: CSV lists of files, scikit-learn digits and CIFAR python batches."""
from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets

from resnets.data import DataError, eval_transform, load_splits, train_transform
from resnets.models.pretrained_cfg import PretrainedCfg

DATA_CFG = PretrainedCfg(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)


def paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


# ---------------------------------------------------------------- CSV

def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_split_with_relative_and_absolute_paths(write_image, assert_labels_match_pixels, colors,
                                                    tmp_path: Path) -> None:
    rows = ["file,label"]
    for name in ("cherry", "apple", "banana"):
        for i in range(5):
            write_image(tmp_path / "images" / f"{name}{i}.png", colors[name])
            rows.append(f"images/{name}{i}.png,{name}")
    elsewhere = write_image(tmp_path / "elsewhere" / "far.png", colors["apple"])
    rows.append(f"{elsewhere},apple")
    csv_path = write_csv(tmp_path / "labels.csv", rows)

    splits = load_splits("csv", csv_path, val_fraction=0.2, seed=0)
    assert splits.class_names == ["apple", "banana", "cherry"]
    assert Counter(splits.val_labels) == {0: 1, 1: 1, 2: 1}
    assert Counter(splits.train_labels) == {0: 5, 1: 4, 2: 4}
    assert str(elsewhere) in paths(splits.train) + paths(splits.val)
    assert_labels_match_pixels(splits.train, splits.class_names)
    assert_labels_match_pixels(splits.val, splits.class_names)
    assert splits.description == f"CSV {csv_path}: 13 train / 3 val, 3 classes (split 80/20, seed 0)"
    assert paths(load_splits("csv", csv_path, seed=0).val) == paths(splits.val)


def test_csv_missing_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", ["file,class", "a.png,apple"])
    with pytest.raises(DataError, match=r"missing column\(s\) label \(header is file,class"):
        load_splits("csv", csv_path)


def test_csv_names_the_first_files_it_cannot_find(write_image, colors, tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", colors["apple"])
    lines = ["file,label", "a.png,apple"] + [f"gone{i}.png,banana" for i in range(7)]
    csv_path = write_csv(tmp_path / "labels.csv", lines)
    with pytest.raises(DataError, match=r"7 listed files not found: .*gone0\.png, .*gone4\.png, \.\.\. \(7 in all\)"):
        load_splits("csv", csv_path)


def test_csv_rejects_non_images_and_repeats(write_image, colors, tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", colors["apple"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"not images: .*notes\.txt"):
        load_splits("csv", write_csv(tmp_path / "one.csv", ["file,label", "a.png,apple", "notes.txt,banana"]))
    with pytest.raises(DataError, match=r"listed more than once: .*a\.png"):
        load_splits("csv", write_csv(tmp_path / "two.csv", ["file,label", "a.png,apple", "a.png,banana"]))


def test_csv_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such CSV file"):
        load_splits("csv", tmp_path / "labels.csv")


# ---------------------------------------------------------------- digits

def test_digits_are_real_upscaled_and_stratified() -> None:
    from sklearn.datasets import load_digits

    splits = load_splits("digits", val_fraction=0.2, seed=0)
    assert splits.class_names == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.val) == 1797
    per_class = Counter(splits.train_labels) + Counter(splits.val_labels)
    assert per_class == Counter(load_digits().target.tolist())
    assert all(Counter(splits.val_labels)[c] == int(n * 0.2 + 0.5) for c, n in per_class.items())

    image, label = splits.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and isinstance(label, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    # Each val image, shrunk back to 8x8, is nearest to an original digit of its own label.
    originals = torch.from_numpy(load_digits().images * (255 / 16)).flatten(1).float()  # (1797, 64)
    val = torch.stack([splits.val[i][0][0] for i in range(len(splits.val))]).float()  # (359, 32, 32)
    shrunk = torch.nn.functional.avg_pool2d(val[:, None], 4).flatten(1)  # (359, 64)
    nearest = torch.cdist(shrunk, originals).argmin(1)
    assert (torch.from_numpy(load_digits().target)[nearest] == torch.tensor(splits.val_labels)).float().mean() > 0.99
    assert splits.description.startswith("scikit-learn digits: 1,438 train / 359 val, 10 classes")


def test_digits_go_through_the_transforms() -> None:
    splits = load_splits("digits", train_transform=train_transform(DATA_CFG), eval_transform=eval_transform(DATA_CFG))
    image, _ = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert load_splits("digits", seed=1).val_labels != splits.val_labels


# ---------------------------------------------------------------- CIFAR


CIFAR_LAYOUTS = {
    # name: (torchvision class, files in the train split, test files, meta file, label key, meta key, classes)
    "cifar10": (tv_datasets.CIFAR10, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names", 10),
    "cifar100": (tv_datasets.CIFAR100, ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write small CIFAR python batches (10 images each) and make torchvision expect their checksums."""

    def write(name: str) -> tuple[Path, dict[str, list[int]], list[str]]:
        cifar, train_files, test_files, meta_file, label_key, meta_key, n_classes = CIFAR_LAYOUTS[name]
        folder = tmp_path / cifar.base_folder
        folder.mkdir()
        labels: dict[str, list[int]] = {}
        for k, file in enumerate(train_files + test_files):
            batch_labels = [(k * 10 + i) % n_classes for i in range(10)]
            pixels = np.repeat(np.arange(k * 10, k * 10 + 10, dtype=np.uint8)[:, None], 3072, axis=1)  # (10, 3072)
            (folder / file).write_bytes(pickle.dumps({"data": pixels, label_key: batch_labels}))
            labels[file] = batch_labels
        class_names = [f"class_{c:03d}" for c in range(n_classes)]
        (folder / meta_file).write_bytes(pickle.dumps({meta_key: class_names}))
        monkeypatch.setattr(cifar, "train_list", [[f, _md5(folder / f)] for f in train_files])
        monkeypatch.setattr(cifar, "test_list", [[f, _md5(folder / f)] for f in test_files])
        monkeypatch.setattr(cifar, "meta", {"filename": meta_file, "key": meta_key, "md5": _md5(folder / meta_file)})
        return tmp_path, labels, class_names

    return write


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_uses_the_official_train_test_split(fake_cifar, name: str) -> None:
    root, labels, class_names = fake_cifar(name)
    _, train_files, test_files, *_ = CIFAR_LAYOUTS[name]
    splits = load_splits(name, root, val_fraction=0.5, seed=7, eval_transform=lambda img: np.asarray(img))

    assert splits.class_names == class_names
    assert splits.train_labels == [label for f in train_files for label in labels[f]]
    assert splits.val_labels == [label for f in test_files for label in labels[f]]
    image, label = splits.train[3]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and label == splits.train_labels[3]
    assert np.asarray(image).min() == np.asarray(image).max() == 3  # the 4th image written is all 3s
    val_image, _ = splits.val[2]
    assert val_image.shape == (32, 32, 3) and (val_image == 10 * len(train_files) + 2).all()
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    n_train = 10 * len(train_files)
    assert splits.description == f"{title} {root}: {n_train} train / 10 val, {len(class_names)} classes " \
                                 f"(official train/test split)"


def test_cifar_accepts_the_batches_folder_itself(fake_cifar) -> None:
    root, _, _ = fake_cifar("cifar10")
    assert len(load_splits("cifar10", root / "cifar-10-batches-py").train) == 50


def test_cifar_missing_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no usable CIFAR-10 python batches in .*cifar-10-batches-py.*download=True"):
        load_splits("cifar10", tmp_path)
