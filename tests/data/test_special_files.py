"""Files that are not images to read: a FIFO (opening it blocked forever), a link to /dev/zero and a sparse file
larger than --max-image-mb (both read whole until memory ran out). Every command that reads images refuses
them before opening, and skips and lists them with their reason like any broken image.

Each test has a timeout: on a hang it fails instead of blocking the suite.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnets
from resnets.cli import main
from resnets.data.images import read_bytes
from resnets.errors import BrokenImageError

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")]

REASONS = {"fifo.jpg": "not a regular file: a FIFO", "zero.jpg": "not a regular file: a character device",
           "huge.jpg": "too large: 2 MiB, over the 1 MiB"}


def add_special_files(folder: Path) -> dict[str, str]:
    """fifo.jpg, zero.jpg (a link to /dev/zero) and huge.jpg (2 MiB, sparse: no disk used) in `folder`;
    {path: the start of the reason each is refused with}, under a limit of 1 MiB."""
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(2 * 2**20)
    return {str(folder / name): reason for name, reason in REASONS.items()}


def image_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    return root


def listed(csv_path: Path) -> dict[str, str]:
    with open(csv_path, newline="") as f:
        return {row["file"]: row["reason"] for row in csv.DictReader(f)}


def assert_reasons(found: dict[str, str], expected: dict[str, str]) -> None:
    assert {file: found.get(file, "")[:len(reason)] for file, reason in expected.items()} == expected


def test_read_bytes_refuses_special_and_oversized_files_before_reading(tmp_path):
    expected = add_special_files(tmp_path)
    for file, reason in expected.items():
        with pytest.raises(BrokenImageError, match=reason):
            read_bytes(file, max_bytes=2**20)
    small = tmp_path / "small.jpg"
    small.write_bytes(b"\xff" * 2**20)  # exactly the limit: read
    assert len(read_bytes(small, max_bytes=2**20)) == 2**20
    (tmp_path / "link.jpg").symlink_to(small)  # a link to a regular file is that file
    assert read_bytes(tmp_path / "link.jpg", max_bytes=2**20) == small.read_bytes()


@pytest.mark.parametrize("workers", [0, 2])
def test_check_data_lists_special_and_oversized_files(tmp_path, capsys, workers):
    data = image_folder(tmp_path / "data")
    expected = add_special_files(data / "a")
    code = main(["check-data", str(data), "-j", str(workers), "--max-image-mb", "1"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert re.search(r"^ +a +8$", out, re.M) and re.search(r"^ +b +8$", out, re.M)  # the images still count
    for file, reason in expected.items():
        assert f"{file}: {reason}" in out
    assert "3 unreadable files" in out


@pytest.mark.timeout(20)
def test_a_fifo_and_a_link_to_dev_zero_are_listed_with_the_default_limit(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=2)
    os.mkfifo(data / "a" / "fifo.jpg")  # was: check-data blocked in open() for ever
    (data / "b" / "zero.jpg").symlink_to("/dev/zero")  # was: read until memory ran out
    code = main(["check-data", str(data), "-j", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "fifo.jpg: not a regular file: a FIFO" in out and "zero.jpg: not a regular file" in out


def test_the_limit_is_checked_as_an_argument(tmp_path, capsys):
    code = main(["check-data", str(image_folder(tmp_path / "data")), "--max-image-mb", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == ["resnets check-data: error: max-image-mb must be a number > 0, "
                                                      "got 0"]


@pytest.mark.parametrize("pipeline", ["files", "in_memory", "decode_on_device"])
def test_training_skips_and_lists_special_and_oversized_files(tmp_path, pipeline):
    data = image_folder(tmp_path / "data")
    expected = add_special_files(data / "a")
    options = {"in_memory": dict(in_memory=True, cache_dir=str(tmp_path / "cache")),
               "decode_on_device": dict(decode_on_device=True), "files": {}}[pipeline]
    result = resnets.train(data_dir=str(data), model="cifar_resnet20", img_size=16, epochs=1, batch_size=32,
                           workers=0, max_image_mb=1, max_bad_fraction=0.2, output=str(tmp_path / "runs"),
                           progress=False, **options)
    assert_reasons(listed(result.run_dir / "bad_files.csv"), expected)
    assert result.metrics["unreadable_files"] == 3


def test_a_csv_dataset_listing_special_files_skips_and_lists_them(tmp_path):
    data = image_folder(tmp_path / "data")
    expected = add_special_files(data / "a")
    rows = [(str(p), p.parent.name) for p in sorted(data.rglob("*.jpg"))]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    result = resnets.train(data_dir=str(tmp_path / "list.csv"), model="cifar_resnet20", img_size=16, epochs=1,
                           batch_size=32, workers=0, max_image_mb=1, max_bad_fraction=0.2,
                           output=str(tmp_path / "runs"), progress=False)
    assert_reasons(listed(result.run_dir / "bad_files.csv"), expected)


@pytest.fixture
def weights(tmp_path) -> Path:
    from resnets import create_model
    from resnets.models.weights import save_weights

    model = create_model("cifar_resnet20", num_classes=2)
    model.class_names = ["a", "b"]
    save_weights(model, tmp_path / "w" / "best.safetensors")
    return tmp_path / "w" / "best.safetensors"


def test_eval_skips_and_lists_special_and_oversized_files(tmp_path, capsys, weights):
    data = image_folder(tmp_path / "data")
    expected = add_special_files(data / "a")
    code = main(["eval", "--weights", str(weights), "--data-dir", str(data), "--device", "cpu", "-j", "0",
                 "--max-image-mb", "1", "--max-bad-fraction", "0.2", "--output", str(tmp_path / "eval")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "16 images (3 unreadable, skipped)" in out
    assert_reasons(listed(tmp_path / "eval" / "bad_files.csv"), expected)


def test_predict_skips_special_files_in_a_folder_and_named_alone(tmp_path, capsys, weights):
    data = image_folder(tmp_path / "data", per_class=2)
    expected = add_special_files(data / "a")
    code = main(["predict", "--weights", str(weights), "--device", "cpu", "--max-image-mb", "1", str(data / "a")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + 2  # header and the two images
    for file, reason in expected.items():
        assert f"skipped {file}: {reason}" in err
    for alone in [data / "a" / "fifo.jpg", "/dev/zero"]:  # named as arguments: one line, exit 2, no hang
        code = main(["predict", "--weights", str(weights), "--device", "cpu", str(alone)])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().splitlines()[-1] == f"resnets predict: error: no readable images in {alone}"
        assert "not a regular file" in err
