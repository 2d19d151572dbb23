"""Finding the images under a folder, as training (load_splits, load_eval_set) and predict (list_images) do:
hidden and non-image files, and symlinks (loops, links elsewhere, links between classes)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from torchvision import datasets as tv_datasets

from resnets.data import DataError, load_eval_set, load_splits
from resnets.data.walk import list_images


def paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


# ---------------------------------------------------------------- hidden and non-image files

def test_hidden_and_non_image_files_are_ignored_upper_case_extensions_are_not(make_folder, write_image, colors,
                                                                            assert_labels_match_pixels,
                                                                            tmp_path: Path) -> None:
    """Training (load_splits) and predict (list_images) skip the same files: hidden files and folders, macOS
    resource forks, non-images; an upper-case extension is an image all the same."""
    root = make_folder(tmp_path, {"apple": 4, "banana": 4})
    for junk in ("apple/notes.txt", ".DS_Store", "banana/.DS_Store"):
        (root / junk).write_bytes(b"not an image")
    (root / "apple/._apple_00.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write_image(root / ".ipynb_checkpoints/old.png", colors["cherry"])  # a hidden folder is not a class
    write_image(root / "apple/.thumbs/small.png", colors["apple"])
    (root / "banana/.hidden").mkdir()
    (root / "banana/.hidden/x.jpg").write_bytes(b"\x00junk")
    write_image(root / "banana/LOUD.JPG", colors["banana"])
    write_image(root / "banana/more/nested.png", colors["banana"])  # subfolders of a class belong to it

    splits = load_splits("folder", root, val_fraction=0.25)
    assert splits.class_names == ["apple", "banana"]
    files = {Path(p).relative_to(root).as_posix() for p in paths(splits.train) + paths(splits.val)}
    assert len(files) == 10
    assert {"banana/LOUD.JPG", "banana/more/nested.png"} <= files
    assert all(not any(part.startswith(".") for part in f.split("/")) and not f.endswith(".txt") for f in files)
    assert_labels_match_pixels(splits.train, splits.class_names)
    assert sorted(list_images([root])) == sorted(root / f for f in files)  # what predict reads


# ---------------------------------------------------------------- symlinks

def test_a_symlink_loop_lists_each_image_once_and_says_so(make_folder, tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 10, "banana": 10})
    (root / "apple" / "up").symlink_to("..")  # apple/up/apple/up/...: ImageFolder lists each image dozens of times
    splits = load_splits("folder", root)
    train, val = ([os.path.realpath(p) for p in paths(split)] for split in (splits.train, splits.val))
    assert len(train) + len(val) == 20 and not set(train) & set(val)
    assert splits.description.startswith(f"ImageFolder {root}: 16 train / 4 val, 2 classes")
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {root}: skipped 1 symlink to a folder or file already listed")


def test_links_to_folders_and_files_elsewhere_are_followed_as_imagefolder_does(make_folder, write_image,
                                                                               assert_labels_match_pixels, colors,
                                                                               tmp_path: Path, capsys) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", {"apple": 3, "banana": 3, "cherry": 4})
    root = make_folder(tmp_path / "fruit", {"apple": 4, "banana": 4})
    write_image(root / "banana" / "nested" / "deep.png", colors["banana"])
    (root / "cherry").symlink_to(elsewhere / "cherry")  # a class folder kept on another disk
    (root / "apple" / "more").symlink_to(elsewhere / "apple")
    (root / "banana" / "extra.jpg").symlink_to(elsewhere / "banana" / "banana_00.jpg")
    dataset, _, class_names = load_eval_set(root, None)
    assert paths(dataset) == [path for path, _ in tv_datasets.ImageFolder(str(root)).samples]  # same order too
    assert class_names == ["apple", "banana", "cherry"] and len(dataset) == 4 + 3 + 4 + 1 + 1 + 4
    assert_labels_match_pixels(dataset, class_names)
    assert capsys.readouterr().err == ""


def test_two_links_to_one_place_count_once_and_a_linked_file_keeps_its_own_class(make_folder, tmp_path: Path,
                                                                                 capsys) -> None:
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


def test_a_class_folder_linked_to_another_class_is_named_in_the_warning(make_folder, tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 3, "banana": 3})
    (root / "cherry").symlink_to("apple")  # cherry would get apple's images twice over, as another label
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*: cherry"):
        load_splits("folder", root)
    err = capsys.readouterr().err
    assert f"warning: {root}: class folder cherry is a link to the class folder apple" in err


def test_a_val_folder_that_is_the_train_folder_is_refused(make_folder, tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"apple": 3, "banana": 3})
    (tmp_path / "val").symlink_to("train")
    with pytest.raises(DataError, match=r"train folder .*train and val folder .*val are the same folder.*leakage"):
        load_splits("folder", tmp_path)


def test_a_class_linked_to_a_subfolder_of_another_class_leaves_it_in_its_own_class(make_folder, write_image,
                                                                                   assert_labels_match_pixels, colors,
                                                                                   tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "fruit", {"apple": 2, "banana": 2})
    for i in range(2):
        write_image(root / "apple" / "sub" / f"more_{i}.png", colors["apple"])
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


# ---------------------------------------------------------------- list_images, as predict lists its inputs

def test_predict_lists_a_folder_as_training_lists_a_class_folder(make_folder, tmp_path: Path, capsys) -> None:
    """predict's `list_images` used Path.rglob, which (Python < 3.13) does not enter a linked subfolder."""
    elsewhere = make_folder(tmp_path / "elsewhere", {"cherry": 3})
    root = make_folder(tmp_path / "fruit", {"apple": 4})
    (root / "apple" / "more").symlink_to(elsewhere / "cherry")
    (root / "apple" / "up").symlink_to("..")  # a loop
    listed = [str(p) for p in list_images([root / "apple"])]
    dataset, _, _ = load_eval_set(root, None)
    assert listed == paths(dataset) and len(listed) == 4 + 3
    assert "skipped 1 symlink" in capsys.readouterr().err


def test_predict_lists_a_folder_with_a_linked_image_beside_real_ones(make_folder, tmp_path: Path, capsys) -> None:
    """A link to an image of the same folder is a repeat; the walk had no real path for the folder given
    and stopped with a KeyError."""
    root = make_folder(tmp_path / "fruit", {"apple": 2})
    (root / "apple" / "sub").mkdir()
    (root / "apple" / "copy.jpg").symlink_to("apple_00.jpg")
    (root / "apple" / "sub" / "up.png").symlink_to("../apple_01.png")
    (root / "apple" / "sub" / "own.jpg").symlink_to(root / "apple" / "apple_00.jpg")
    assert list_images([root / "apple"]) == [root / "apple" / "apple_00.jpg", root / "apple" / "apple_01.png"]
    assert "skipped 3 symlinks" in capsys.readouterr().err
