"""`resnets check-data`: unreadable files, duplicates, leakage between splits, empty and imbalanced classes; and
that it reads the same files, and refuses the same folders, as training does."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnets.cli import main
from resnets.data import DataError, list_images, load_splits
from resnets.data.check import check_data


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["check-data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_data_on_clean_data_exits_0(tmp_path, capsys) -> None:
    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(noise(6, 6, seed=100 * k + 10 * (split == "val") + i)).save(
                    tmp_path / split / cls / f"{i}.png")
        (tmp_path / split / "a" / ".DS_Store").write_bytes(b"junk")
    code, out, _ = check_cli(capsys, tmp_path, "-j", "1")
    assert code == 0 and out.strip().endswith("no problems found")
    assert "train: " in out and "val: " in out and "imbalance: 1.0x (classes are balanced)" in out


def problem_data(root: Path) -> dict[str, object]:
    """train/: a (12), b (1 + a copy of an a image), empty (only junk and a broken file); val/: a, b, empty."""
    files: dict[str, object] = {}
    for cls, n in (("a", 12), ("b", 1)):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(noise(6, 6, seed=500 * (cls == "b") + i)).save(root / "train" / cls / f"{i}.png")
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    (root / "train" / "empty" / "broken.jpg").write_text("not a jpeg")
    shutil.copy(root / "train" / "a" / "0.png", root / "train" / "b" / "copy_of_a0.png")  # label conflict
    for k, cls in enumerate(("a", "b", "empty")):
        (root / "val" / cls).mkdir(parents=True)
        Image.fromarray(noise(6, 6, seed=1000 + k)).save(root / "val" / cls / "v.png")
    shutil.copy(root / "train" / "a" / "5.png", root / "val" / "a" / "leaked.png")
    (root / "val" / "a" / "empty.png").write_bytes(b"")
    files["broken"] = sorted([str(root / "train" / "empty" / "broken.jpg"), str(root / "val" / "a" / "empty.png")])
    files["duplicate"] = [str(root / "train" / "a" / "0.png"), str(root / "train" / "b" / "copy_of_a0.png")]
    files["leak"] = [str(root / "train" / "a" / "5.png"), str(root / "val" / "a" / "leaked.png")]
    return files


@pytest.mark.parametrize("workers", [1, 2])
def test_check_data_reports_every_kind_of_problem(tmp_path, workers: int) -> None:
    expected = problem_data(tmp_path)
    report = check_data(tmp_path, workers=workers)
    train, val = report.splits
    assert (train.name, val.name) == ("train", "val")
    assert [f for f, _ in report.broken] == expected["broken"]
    assert all(reason for _, reason in report.broken)
    assert report.duplicates == [expected["duplicate"]] and report.leaks == [expected["leak"]]
    assert train.class_counts == {"a": 12, "b": 2, "empty": 0} and train.empty_classes == ["empty"]
    assert train.imbalance == 6.0 and val.imbalance == 2.0
    assert report.files == 12 + 2 + 1 + 5  # the broken ones decoded too; junk never
    assert check_data(tmp_path, workers=workers, max_imbalance=5).problems[1:3] == [
        "train: 1 class without a readable image (empty)", "train: classes imbalanced 6.0x (more than 5x)"]


def test_check_data_cli_exit_codes_and_report(tmp_path, capsys) -> None:
    expected = problem_data(tmp_path / "d")
    code, out, _ = check_cli(capsys, tmp_path / "d", "-j", "2", "--max-imbalance", "5")
    assert code == 1
    for needle in (*expected["broken"], " = ".join(expected["duplicate"]), " = ".join(expected["leak"]),
                   "EMPTY", "imbalance: 6.0x (a 12 / b 2)", "5 problems: 2 unreadable files;",
                   "1 image in more than one split (leakage)"):
        assert needle in out, needle
    # The same train folder with a val folder given apart: the leak is found all the same.
    code, out, _ = check_cli(capsys, tmp_path / "d" / "train", "--val-dir", tmp_path / "d" / "val", "-j", "1")
    assert code == 1 and " = ".join(expected["leak"]) in out
    for argv in ([tmp_path / "missing"], [tmp_path / "d", "--val-dir", tmp_path / "nope"],
                 [tmp_path / "d", "-j", "-1"]):
        code, out, err = check_cli(capsys, *argv)
        assert code == 2 and out == "" and err.startswith("resnets check-data: error: ") and err.count("\n") == 1


def test_check_data_prints_names_with_newlines_escaped(tmp_path, capsys) -> None:
    """A class folder or file named with a newline or carriage return cannot add lines of its own to the report
    (here, a fake "no problems found" and a fake section); names are escaped as repr escapes them."""
    for k, cls in enumerate(("cat\nno problems found", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(noise(6, 6, seed=10 * k + i)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "bad\r\nunreadable files: 0\x1b[2J.png").write_bytes(b"junk")  # and a terminal escape
    code, out, _ = check_cli(capsys, tmp_path, "-j", "1")
    lines = out.splitlines()  # splits at \r too, as a terminal shows it
    assert code == 1 and "no problems found" not in lines and "\x1b" not in out
    assert "  cat\\nno problems found         2" in lines
    assert any(line.startswith(f"  {tmp_path}/dog/bad\\r\\nunreadable files: 0\\x1b[2J.png: not an image")
               for line in lines)
    assert [line for line in lines if line.startswith("unreadable files")] == ["unreadable files: 1"]
    assert lines[-1] == "1 problem: 1 unreadable file"


def test_check_data_also_checks_test_split_for_leakage_and_classes(tmp_path) -> None:
    for k, (split, cls) in enumerate([("train", "a"), ("train", "b"), ("val", "a"), ("val", "b"), ("test", "a"),
                                      ("test", "c")]):
        (tmp_path / split / cls).mkdir(parents=True)
        Image.fromarray(noise(6, 6, seed=k)).save(tmp_path / split / cls / "0.png")
    shutil.copy(tmp_path / "train" / "b" / "0.png", tmp_path / "test" / "a" / "copy.png")
    report = check_data(tmp_path, workers=1)
    assert [s.name for s in report.splits] == ["train", "val", "test"]
    assert report.leaks == [[str(tmp_path / "test" / "a" / "copy.png"), str(tmp_path / "train" / "b" / "0.png")]]
    assert report.class_mismatch == ["test: missing b; extra c"] and not report.duplicates
    assert len(report.problems) == 2


# ---------------------------------------------------------------- as training does

def two_classes(root: Path, n: int = 10, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(noise(8, 8, seed=100 * k + i)).save(root / cls / f"{i}.png")
    return root


def test_check_data_training_and_predict_read_the_same_files_through_a_symlink_loop(tmp_path, capsys) -> None:
    root = two_classes(tmp_path / "loop")
    (root / "a" / "up").symlink_to("..")
    splits = load_splits("folder", root)
    trained_on = sorted(f for f, _ in splits.train.samples + splits.val.samples)
    assert trained_on == sorted(map(str, list_images([root])))  # what predict reads
    assert len(trained_on) == 20
    capsys.readouterr()
    code, out, err = check_cli(capsys, root, "-j", "1")
    assert code == 0 and out.startswith(f"{root}: 20 files decoded")
    assert err.count("warning: ") == 1 and "skipped 1 symlink" in err


def test_check_data_reports_a_single_class_as_training_refuses_it(tmp_path, capsys) -> None:
    root = two_classes(tmp_path / "one", n=3, classes=("a",))
    with pytest.raises(DataError) as refused:
        load_splits("folder", root)
    code, out, _ = check_cli(capsys, root, "-j", "1")
    assert code == 1 and out.strip().endswith(f"1 problem: {refused.value}")


def test_check_data_refuses_splits_that_are_one_folder_as_training_does(tmp_path, capsys) -> None:
    train = two_classes(tmp_path / "train", n=2)
    for argv, says in (([train, "--val-dir", train], "are the same folder"),
                       ([tmp_path, "--val-dir", tmp_path], f"train folder {train} is inside val folder"),
                       ([train, "--val-dir", train / "a"], f"val folder {train / 'a'} is inside train folder")):
        code, out, err = check_cli(capsys, *argv, "-j", "1")
        assert code == 2 and out == "" and err.count("\n") == 1, argv
        assert err.startswith("resnets check-data: error: ") and says in err and "(leakage)" in err
    (tmp_path / "val").symlink_to("train")
    with pytest.raises(DataError) as refused:
        load_splits("folder", tmp_path)
    code, _, err = check_cli(capsys, tmp_path, "-j", "1")
    assert code == 2 and err == f"resnets check-data: error: {refused.value}\n"
