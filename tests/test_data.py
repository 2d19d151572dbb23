"""Datasets and splits: image folders, CSV lists, scikit-learn digits, CIFAR batches, eval folders.

The images are real PNG/JPEG files written into tmp_path, one solid colour per class, so a test can tell
from the pixels alone whether an item carries the right label.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets

from resnets.data import DataError, DataSplits, eval_transform, load_eval_set, load_splits, train_transform
from resnets.errors import ConfigError
from resnets.models.pretrained_cfg import PretrainedCfg

COLORS = {"apple": (220, 20, 20), "banana": (240, 220, 30), "cherry": (90, 0, 160), "durian": (20, 160, 40)}
DATA_CFG = PretrainedCfg(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)


def write_image(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).convert(mode).save(path)  # format from the suffix: PNG or JPEG
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    """<root>/<class>/<i>.png|jpg, alternating PNG and JPEG, in the class's colour."""
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{name}_{i:02d}.{'png' if i % 2 else 'jpg'}", COLORS[name])
    return root


def class_of(image: Image.Image) -> str:
    """The class whose colour the image is (JPEG shifts colours a little, so: the nearest one)."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda name: np.abs(mean - COLORS[name]).sum())


def assert_labels_match_pixels(dataset, class_names: list[str]) -> None:
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert isinstance(label, int)
        assert class_of(image) == class_names[label]


def paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


# ---------------------------------------------------------------- folder


def test_folder_split_is_stratified_and_covers_every_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 20, "banana": 10, "cherry": 5})
    splits = load_splits("folder", root, val_fraction=0.2, seed=0)

    assert isinstance(splits, DataSplits)
    assert splits.class_names == ["apple", "banana", "cherry"]
    assert Counter(splits.val_labels) == {0: 4, 1: 2, 2: 1}
    assert Counter(splits.train_labels) == {0: 16, 1: 8, 2: 4}
    assert splits.train_labels == [label for _, label in splits.train]
    assert splits.val_labels == [label for _, label in splits.val]
    train_files, val_files = set(paths(splits.train)), set(paths(splits.val))
    assert not train_files & val_files
    assert train_files | val_files == {str(p) for p in root.rglob("*.*")}
    assert_labels_match_pixels(splits.train, splits.class_names)
    assert_labels_match_pixels(splits.val, splits.class_names)
    assert splits.description == f"ImageFolder {root}: 28 train / 7 val, 3 classes (split 80/20, seed 0)"


def test_split_depends_on_the_seed_only(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 10, "banana": 10, "cherry": 10})
    first, again = load_splits("folder", root, seed=0), load_splits("folder", root, seed=0)
    other = load_splits("folder", root, seed=1)
    assert paths(first.val) == paths(again.val) and paths(first.train) == paths(again.train)
    assert set(paths(first.val)) != set(paths(other.val))
    assert Counter(other.val_labels) == Counter(first.val_labels) == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("val_fraction, expected_val", [(0.5, {0: 5, 1: 1}), (0.1, {0: 1, 1: 1})])
def test_every_class_with_two_images_lands_in_train_and_val(tmp_path: Path, val_fraction: float,
                                                            expected_val: dict[int, int]) -> None:
    # banana's share of a 10% val would round to 0 images: it still gets one, and keeps one for training.
    root = make_folder(tmp_path, {"apple": 10, "banana": 2})
    splits = load_splits("folder", root, val_fraction=val_fraction)
    assert Counter(splits.val_labels) == expected_val
    assert set(splits.train_labels) == {0, 1}


def test_train_and_val_get_their_own_transform(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 5, "banana": 5})
    splits = load_splits("folder", root, train_transform=lambda img: ("train", img.size),
                         eval_transform=lambda img: ("eval", img.size))
    assert all(item == ("train", (20, 16)) for item, _ in splits.train)
    assert all(item == ("eval", (20, 16)) for item, _ in splits.val)


def test_real_transforms_batch_through_a_dataloader(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 6, "banana": 6})
    splits = load_splits("folder", root, train_transform=train_transform(DATA_CFG),
                         eval_transform=eval_transform(DATA_CFG))
    images, labels = next(iter(DataLoader(splits.train, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    # A DataLoader worker started by "spawn" (macOS, Windows) receives the dataset pickled.
    val_copy = pickle.loads(pickle.dumps(splits.val))
    torch.testing.assert_close(val_copy[0][0], splits.val[0][0])


def test_hidden_and_non_image_files_are_ignored_upper_case_extensions_are_not(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 4, "banana": 4})
    for junk in ("apple/notes.txt", ".DS_Store", "banana/.DS_Store"):
        (root / junk).write_bytes(b"not an image")
    (root / "apple/._apple_00.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write_image(root / ".ipynb_checkpoints/old.png", COLORS["cherry"])  # a hidden folder is not a class
    write_image(root / "apple/.thumbs/small.png", COLORS["apple"])
    write_image(root / "banana/LOUD.JPG", COLORS["banana"])
    write_image(root / "banana/more/nested.png", COLORS["banana"])  # subfolders of a class belong to it

    splits = load_splits("folder", root, val_fraction=0.25)
    assert splits.class_names == ["apple", "banana"]
    files = {Path(p).relative_to(root).as_posix() for p in paths(splits.train) + paths(splits.val)}
    assert len(files) == 10
    assert {"banana/LOUD.JPG", "banana/more/nested.png"} <= files
    assert all(not any(part.startswith(".") for part in f.split("/")) and not f.endswith(".txt") for f in files)
    assert_labels_match_pixels(splits.train, splits.class_names)


def test_images_are_decoded_to_rgb(tmp_path: Path) -> None:
    write_image(tmp_path / "apple/gray.png", COLORS["apple"], mode="L")
    write_image(tmp_path / "apple/alpha.png", COLORS["apple"], mode="RGBA")
    write_image(tmp_path / "banana/b.png", COLORS["banana"], mode="P")
    write_image(tmp_path / "banana/c.png", COLORS["banana"])
    splits = load_splits("folder", tmp_path, val_fraction=0.5)
    assert [img.mode for img, _ in list(splits.train) + list(splits.val)] == ["RGB"] * 4


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_explicit_train_and_val_folders_are_used_as_they_are(tmp_path: Path, val_name: str) -> None:
    make_folder(tmp_path / "train", {"apple": 7, "banana": 3})
    make_folder(tmp_path / val_name, {"apple": 2, "banana": 1})
    splits = load_splits("folder", tmp_path, val_fraction=0.5, seed=3)
    assert splits.class_names == ["apple", "banana"]
    assert sorted(paths(splits.train)) == sorted(str(p) for p in (tmp_path / "train").rglob("*.*"))
    assert sorted(paths(splits.val)) == sorted(str(p) for p in (tmp_path / val_name).rglob("*.*"))
    assert splits.val_labels == [0, 0, 1]
    assert_labels_match_pixels(splits.val, splits.class_names)
    assert f"train/ and {val_name}/ folders" in splits.description
    assert "10 train / 3 val, 2 classes" in splits.description


def test_val_folder_is_preferred_over_test_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3})
    make_folder(tmp_path / "val", {"apple": 1, "banana": 1})
    make_folder(tmp_path / "test", {"apple": 2, "banana": 2})
    assert all("/val/" in p for p in paths(load_splits("folder", tmp_path).val))


def test_a_lone_train_folder_is_split_not_taken_as_a_class(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 5, "banana": 5})
    splits = load_splits("folder", tmp_path)
    assert splits.class_names == ["apple", "banana"]
    assert len(splits.train) == 8 and len(splits.val) == 2


def test_train_and_val_folders_with_different_classes(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3, "cherry": 3})
    make_folder(tmp_path / "val", {"apple": 1, "banana": 1, "durian": 1})
    with pytest.raises(DataError, match=r"different classes: only in train: cherry; only in val: durian"):
        load_splits("folder", tmp_path)


# ---------------------------------------------------------------- symlinks


def test_a_symlink_loop_lists_each_image_once_and_says_so(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 10, "banana": 10})
    (root / "apple" / "up").symlink_to("..")  # apple/up/apple/up/...: ImageFolder lists each image dozens of times
    splits = load_splits("folder", root)
    train, val = ([os.path.realpath(p) for p in paths(split)] for split in (splits.train, splits.val))
    assert len(train) + len(val) == 20 and not set(train) & set(val)
    assert splits.description.startswith(f"ImageFolder {root}: 16 train / 4 val, 2 classes")
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {root}: skipped 1 symlink to a folder or file already listed")


def test_links_to_folders_and_files_elsewhere_are_followed_as_imagefolder_does(tmp_path: Path, capsys) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", {"apple": 3, "banana": 3, "cherry": 4})
    root = make_folder(tmp_path / "fruit", {"apple": 4, "banana": 4})
    write_image(root / "banana" / "nested" / "deep.png", COLORS["banana"])
    (root / "cherry").symlink_to(elsewhere / "cherry")  # a class folder kept on another disk
    (root / "apple" / "more").symlink_to(elsewhere / "apple")
    (root / "banana" / "extra.jpg").symlink_to(elsewhere / "banana" / "banana_00.jpg")
    dataset, _, class_names = load_eval_set(root, None)
    assert paths(dataset) == [path for path, _ in tv_datasets.ImageFolder(str(root)).samples]  # same order too
    assert class_names == ["apple", "banana", "cherry"] and len(dataset) == 4 + 3 + 4 + 1 + 1 + 4
    assert_labels_match_pixels(dataset, class_names)
    assert capsys.readouterr().err == ""


def test_two_links_to_one_place_count_once_and_a_linked_file_keeps_its_own_class(tmp_path: Path, capsys) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", {"cherry": 3})
    root = make_folder(tmp_path / "fruit", {"apple": 4, "banana": 4})
    (root / "apple" / "x").symlink_to(elsewhere / "cherry")
    (root / "banana" / "y").symlink_to(elsewhere / "cherry")
    (root / "apple" / "b1.png").symlink_to(root / "banana" / "banana_01.png")
    dataset, labels, _ = load_eval_set(root, None)
    real = [os.path.realpath(p) for p in paths(dataset)]
    assert len(set(real)) == len(real) == 11
    assert Counter(labels) == {0: 4 + 3, 1: 4}  # cherry once, under the first link; banana_01 stays banana's
    assert str(root / "banana" / "banana_01.png") in paths(dataset)
    assert "skipped 2 symlinks" in capsys.readouterr().err


def test_a_class_folder_linked_to_another_class_is_named_in_the_warning(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 3, "banana": 3})
    (root / "cherry").symlink_to("apple")  # cherry would get apple's images twice over, as another label
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*: cherry"):
        load_splits("folder", root)
    err = capsys.readouterr().err
    assert f"warning: {root}: class folder cherry is a link to the class folder apple" in err


def test_a_val_folder_that_is_the_train_folder_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3})
    (tmp_path / "val").symlink_to("train")
    with pytest.raises(DataError, match=r"train folder .*train and val folder .*val are the same folder.*leakage"):
        load_splits("folder", tmp_path)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("dataset", ["folder", "csv", "cifar10"])
def test_data_dir_not_given(dataset: str) -> None:
    with pytest.raises(DataError, match=f"dataset '{dataset}' needs data_dir"):
        load_splits(dataset)


def test_data_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        load_splits("folder", tmp_path / "nowhere")


def test_data_dir_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,label\n")
    with pytest.raises(DataError, match=r"labels.csv: a file, not a folder"):
        load_splits("folder", tmp_path / "labels.csv")


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", COLORS["apple"])
    with pytest.raises(DataError, match="has no class subfolders"):
        load_splits("folder", tmp_path)


def test_folder_with_no_images(tmp_path: Path) -> None:
    for name in ("apple", "banana"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("nothing to see")
    with pytest.raises(DataError, match=r"no images in .* \(looked in 2 class folders\)"):
        load_splits("folder", tmp_path)


def test_folder_with_one_class(tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 5})
    with pytest.raises(DataError, match=r"only one class \(apple\)"):
        load_splits("folder", tmp_path)


def test_class_folder_without_images_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 3, "banana": 3})
    (tmp_path / "durian").mkdir()
    (tmp_path / "durian" / "notes.txt").write_text("to do")
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*: durian$"):
        load_splits("folder", tmp_path)


def test_class_too_small_to_split_is_named_with_its_count(tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 5, "banana": 5, "cherry": 1})
    with pytest.raises(DataError, match=r"class 'cherry' has 1 image: too few to split"):
        load_splits("folder", tmp_path)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_outside_zero_one(tmp_path: Path, val_fraction: float) -> None:
    make_folder(tmp_path, {"apple": 5, "banana": 5})
    with pytest.raises(DataError, match=f"val_fraction must be between 0 and 1.*got {val_fraction}"):
        load_splits("folder", tmp_path, val_fraction=val_fraction)


def test_unknown_dataset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; valid: folder, csv, digits, cifar10, cifar100"):
        load_splits("imagenet", tmp_path)


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_split_with_relative_and_absolute_paths(tmp_path: Path) -> None:
    rows = ["file,label"]
    for name in ("cherry", "apple", "banana"):
        for i in range(5):
            write_image(tmp_path / "images" / f"{name}{i}.png", COLORS[name])
            rows.append(f"images/{name}{i}.png,{name}")
    elsewhere = write_image(tmp_path / "elsewhere" / "far.png", COLORS["apple"])
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


def test_csv_names_the_first_files_it_cannot_find(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", COLORS["apple"])
    lines = ["file,label", "a.png,apple"] + [f"gone{i}.png,banana" for i in range(7)]
    csv_path = write_csv(tmp_path / "labels.csv", lines)
    with pytest.raises(DataError, match=r"7 listed files not found: .*gone0\.png, .*gone4\.png, \.\.\. \(7 in all\)"):
        load_splits("csv", csv_path)


def test_csv_rejects_non_images_and_repeats(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", COLORS["apple"])
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


# ---------------------------------------------------------------- load_eval_set


@pytest.mark.parametrize("layout", ["val", "test", ""])
def test_eval_set_folder(tmp_path: Path, layout: str) -> None:
    if layout:
        make_folder(tmp_path / "train", {"apple": 2, "banana": 2, "cherry": 2})
    make_folder(tmp_path / layout, {"apple": 3, "banana": 2, "cherry": 1})
    dataset, labels, class_names = load_eval_set(tmp_path, transform=None)
    assert class_names == ["apple", "banana", "cherry"]
    assert labels == [0, 0, 0, 1, 1, 2]
    assert all(f"{tmp_path / layout}/" in p and "/train/" not in p for p in paths(dataset))
    assert_labels_match_pixels(dataset, class_names)


def test_eval_set_follows_the_checkpoint_class_order(tmp_path: Path) -> None:
    make_folder(tmp_path / "val", {"apple": 1, "banana": 2, "cherry": 3})
    order = ["cherry", "apple", "banana"]
    dataset, labels, class_names = load_eval_set(tmp_path, transform=eval_transform(DATA_CFG), class_names=order)
    assert class_names == order
    assert Counter(labels) == {0: 3, 1: 1, 2: 2}
    assert dataset[0][0].shape == (3, 32, 32)
    dataset.transform = None
    assert_labels_match_pixels(dataset, order)


def test_eval_set_with_other_classes_names_them(tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 1, "banana": 1, "durian": 1})
    with pytest.raises(DataError, match=r"differ from the model's: missing cherry; extra durian"):
        load_eval_set(tmp_path, None, class_names=["apple", "banana", "cherry"])


def test_eval_set_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_eval_set(tmp_path / "nowhere", None)


def test_thin_images_are_cropped_before_resizing_with_the_same_result():
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from resnets.data.transforms import _to_normalized, eval_transform

    cfg = PretrainedCfg.from_dict({"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 0.875})
    uncapped = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224), *_to_normalized(cfg)])
    rng = np.random.default_rng(0)
    for shape in [(300, 400), (100, 450), (450, 90), (7, 900)]:
        image = Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        assert torch.equal(eval_transform(cfg)(image), uncapped(image))
    # 1 x 40,000 would resize to 256 x 10,240,000 (7.9 GB as float) without the crop first.
    strip = Image.fromarray(rng.integers(0, 255, (1, 40_000, 3), dtype=np.uint8))
    assert eval_transform(cfg)(strip).shape == (3, 224, 224)


# ---------------------------------------------------------------- normalising on the device

@pytest.mark.parametrize("size", [32, 96])  # the pad-crop (small) and RandomResizedCrop branches
def test_uint8_transforms_normalised_on_the_device_equal_the_float_transforms(size: int) -> None:
    from resnets.data.transforms import DeviceNormalize

    cfg = PretrainedCfg.from_dict({"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
           "crop_pct": 0.875, "interpolation": "bilinear"})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 120, 3), dtype=np.uint8))
    finish = DeviceNormalize(cfg, channels_last=True)
    for make in (lambda n: train_transform(cfg, hflip=0.5, normalize=n), lambda n: eval_transform(cfg, normalize=n)):
        torch.manual_seed(3)
        in_workers = make(True)(image)
        torch.manual_seed(3)
        raw = make(False)(image)
        assert raw.dtype == torch.uint8
        on_device = finish(torch.stack([raw]))
        assert on_device.dtype == torch.float32 and on_device.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(on_device[0], in_workers, rtol=0, atol=1e-5)
        assert torch.equal(finish(in_workers[None])[0], in_workers)  # float batches pass as they are


def test_random_erasing_needs_normalising_in_the_workers() -> None:
    cfg = PretrainedCfg.from_dict({"input_size": (3, 96, 96), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    with pytest.raises(ConfigError, match="random erasing"):
        train_transform(cfg, random_erasing=0.25, normalize=False)



def test_predict_lists_a_folder_as_training_lists_a_class_folder(tmp_path: Path, capsys) -> None:
    """predict's `list_images` used Path.rglob, which (Python < 3.13) does not enter a linked subfolder."""
    from resnets.data.walk import list_images

    elsewhere = make_folder(tmp_path / "elsewhere", {"cherry": 3})
    root = make_folder(tmp_path / "fruit", {"apple": 4})
    (root / "apple" / "more").symlink_to(elsewhere / "cherry")
    (root / "apple" / "up").symlink_to("..")  # a loop
    listed = [str(p) for p in list_images([root / "apple"])]
    dataset, _, _ = load_eval_set(root, None)
    assert listed == paths(dataset) and len(listed) == 4 + 3
    assert "skipped 1 symlink" in capsys.readouterr().err


def test_predict_lists_a_folder_with_a_linked_image_beside_real_ones(tmp_path: Path, capsys) -> None:
    """A link to an image of the same folder is a repeat; the walk had no real path for the folder given
    and stopped with a KeyError."""
    from resnets.data.walk import list_images

    root = make_folder(tmp_path / "fruit", {"apple": 2})
    (root / "apple" / "sub").mkdir()
    (root / "apple" / "copy.jpg").symlink_to("apple_00.jpg")
    (root / "apple" / "sub" / "up.png").symlink_to("../apple_01.png")
    (root / "apple" / "sub" / "own.jpg").symlink_to(root / "apple" / "apple_00.jpg")
    assert list_images([root / "apple"]) == [root / "apple" / "apple_00.jpg", root / "apple" / "apple_01.png"]
    assert "skipped 3 symlinks" in capsys.readouterr().err


def test_a_class_linked_to_a_subfolder_of_another_class_leaves_it_in_its_own_class(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 2, "banana": 2})
    for i in range(2):
        write_image(root / "apple" / "sub" / f"more_{i}.png", COLORS["apple"])
    (root / "cherry").symlink_to(root / "apple" / "sub")  # taken first, it relabelled apple/sub as cherry
    tv = tv_datasets.ImageFolder(str(root)).samples  # lists apple/sub twice, under both labels
    assert sum(p.startswith(str(root / "cherry")) for p, _ in tv) == 2
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*: cherry"):
        load_splits("folder", root)
    err = capsys.readouterr().err
    assert f"class folder cherry is a link to {root / 'apple' / 'sub'}, a folder of class apple" in err
    (root / "cherry").unlink()
    make_folder(root, {"cherry": 2})
    dataset, labels, class_names = load_eval_set(root, None)
    assert Counter(labels) == {0: 4, 1: 2, 2: 2}
    assert_labels_match_pixels(dataset, class_names)
