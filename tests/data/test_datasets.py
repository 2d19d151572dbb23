"""load_splits on image folders and load_eval_set: stratified splits, explicit train/val folders, the errors a
user can make.

The images are solid colours, one per class (tests/data/conftest.py), so a test can tell from the pixels alone
whether an item carries the right label.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from resnets.data import DataError, DataSplits, eval_transform, load_eval_set, load_splits
from resnets.models.pretrained_cfg import PretrainedCfg

DATA_CFG = PretrainedCfg(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)


def paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


# ---------------------------------------------------------------- folder

def test_folder_split_is_stratified_and_covers_every_file(make_folder, assert_labels_match_pixels,
                                                          tmp_path: Path) -> None:
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


def test_split_depends_on_the_seed_only(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 10, "banana": 10, "cherry": 10})
    first, again = load_splits("folder", root, seed=0), load_splits("folder", root, seed=0)
    other = load_splits("folder", root, seed=1)
    assert paths(first.val) == paths(again.val) and paths(first.train) == paths(again.train)
    assert set(paths(first.val)) != set(paths(other.val))
    assert Counter(other.val_labels) == Counter(first.val_labels) == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("val_fraction, expected_val", [(0.5, {0: 5, 1: 1}), (0.1, {0: 1, 1: 1})])
def test_every_class_with_two_images_lands_in_train_and_val(make_folder, tmp_path: Path, val_fraction: float,
                                                            expected_val: dict[int, int]) -> None:
    # banana's share of a 10% val would round to 0 images: it still gets one, and keeps one for training.
    root = make_folder(tmp_path, {"apple": 10, "banana": 2})
    splits = load_splits("folder", root, val_fraction=val_fraction)
    assert Counter(splits.val_labels) == expected_val
    assert set(splits.train_labels) == {0, 1}


def test_train_and_val_get_their_own_transform(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 5, "banana": 5})
    splits = load_splits("folder", root, train_transform=lambda img: ("train", img.size),
                         eval_transform=lambda img: ("eval", img.size))
    assert all(item == ("train", (20, 16)) for item, _ in splits.train)
    assert all(item == ("eval", (20, 16)) for item, _ in splits.val)


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_explicit_train_and_val_folders_are_used_as_they_are(make_folder, assert_labels_match_pixels, tmp_path: Path,
                                                             val_name: str) -> None:
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


def test_val_folder_is_preferred_over_test_folder(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3})
    make_folder(tmp_path / "val", {"apple": 1, "banana": 1})
    make_folder(tmp_path / "test", {"apple": 2, "banana": 2})
    assert all("/val/" in p for p in paths(load_splits("folder", tmp_path).val))


def test_a_lone_train_folder_is_split_not_taken_as_a_class(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 5, "banana": 5})
    splits = load_splits("folder", tmp_path)
    assert splits.class_names == ["apple", "banana"]
    assert len(splits.train) == 8 and len(splits.val) == 2


def test_train_and_val_folders_with_different_classes(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3, "cherry": 3})
    make_folder(tmp_path / "val", {"apple": 1, "banana": 1, "durian": 1})
    with pytest.raises(DataError, match=r"different classes: only in train: cherry; only in val: durian"):
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


def test_folder_without_class_subfolders(write_image, colors, tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", colors["apple"])
    with pytest.raises(DataError, match="has no class subfolders"):
        load_splits("folder", tmp_path)


def test_folder_with_no_images(tmp_path: Path) -> None:
    for name in ("apple", "banana"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("nothing to see")
    with pytest.raises(DataError, match=r"no images in .* \(looked in 2 class folders\)"):
        load_splits("folder", tmp_path)


def test_folder_with_one_class(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 5})
    with pytest.raises(DataError, match=r"only one class \(apple\)"):
        load_splits("folder", tmp_path)


def test_class_folder_without_images_is_named(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 3, "banana": 3})
    (tmp_path / "durian").mkdir()
    (tmp_path / "durian" / "notes.txt").write_text("to do")
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*: durian$"):
        load_splits("folder", tmp_path)


def test_class_too_small_to_split_is_named_with_its_count(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 5, "banana": 5, "cherry": 1})
    with pytest.raises(DataError, match=r"class 'cherry' has 1 image: too few to split"):
        load_splits("folder", tmp_path)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_outside_zero_one(make_folder, tmp_path: Path, val_fraction: float) -> None:
    make_folder(tmp_path, {"apple": 5, "banana": 5})
    with pytest.raises(DataError, match=f"val_fraction must be between 0 and 1.*got {val_fraction}"):
        load_splits("folder", tmp_path, val_fraction=val_fraction)


def test_unknown_dataset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; valid: folder, csv, digits, cifar10, cifar100"):
        load_splits("imagenet", tmp_path)


# ---------------------------------------------------------------- load_eval_set

@pytest.mark.parametrize("layout", ["val", "test", ""])
def test_eval_set_folder(make_folder, assert_labels_match_pixels, tmp_path: Path, layout: str) -> None:
    if layout:
        make_folder(tmp_path / "train", {"apple": 2, "banana": 2, "cherry": 2})
    make_folder(tmp_path / layout, {"apple": 3, "banana": 2, "cherry": 1})
    dataset, labels, class_names = load_eval_set(tmp_path, transform=None)
    assert class_names == ["apple", "banana", "cherry"]
    assert labels == [0, 0, 0, 1, 1, 2]
    assert all(f"{tmp_path / layout}/" in p and "/train/" not in p for p in paths(dataset))
    assert_labels_match_pixels(dataset, class_names)


def test_eval_set_follows_the_checkpoint_class_order(make_folder, assert_labels_match_pixels, tmp_path: Path) -> None:
    make_folder(tmp_path / "val", {"apple": 1, "banana": 2, "cherry": 3})
    order = ["cherry", "apple", "banana"]
    dataset, labels, class_names = load_eval_set(tmp_path, transform=eval_transform(DATA_CFG), class_names=order)
    assert class_names == order
    assert Counter(labels) == {0: 3, 1: 1, 2: 2}
    assert dataset[0][0].shape == (3, 32, 32)
    dataset.transform = None
    assert_labels_match_pixels(dataset, order)


def test_eval_set_with_other_classes_names_them(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path, {"apple": 1, "banana": 1, "durian": 1})
    with pytest.raises(DataError, match=r"differ from the model's: missing cherry; extra durian"):
        load_eval_set(tmp_path, None, class_names=["apple", "banana", "cherry"])


def test_eval_set_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_eval_set(tmp_path / "nowhere", None)
