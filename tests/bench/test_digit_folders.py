"""benchmarks/digit_folders.py: the folders the time-to-accuracy benchmark compares contenders on."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnets.data.datasets import load_splits

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "digit_folders.py"


@pytest.fixture(scope="module")
def folders():
    spec = importlib.util.spec_from_file_location("digit_folders", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its annotations up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def files(folder: Path, part: str) -> dict[str, set[str]]:
    """{class: file names} of one split."""
    return {d.name: {f.name for f in d.iterdir()} for d in sorted((folder / part).iterdir())}


def test_cases_split_the_same_files_for_everyone_and_nest(folders, tmp_path):
    tiny = folders.build_case("tiny", tmp_path)
    uneven = folders.build_case("small-imbalanced", tmp_path)
    train, val = files(tiny, "train"), files(tiny, "val")
    assert [len(v) for v in train.values()] == [24] * 10 and [len(v) for v in val.values()] == [6] * 10
    assert all(not (train[c] & val[c]) for c in train)  # no image in both
    # 20..170 per class, a fifth of each held out: the imbalance survives the split
    wanted = folders.IMBALANCED
    assert [len(v) for v in files(uneven, "train").values()] == [n - round(n * 0.2) for n in wanted]
    # the first images of each class in one seeded order: a smaller case's val lies in a larger one's
    for c, names in files(uneven, "val").items():
        small, large = (names, val[c]) if len(names) <= len(val[c]) else (val[c], names)
        assert small <= large
    # resnets takes the folders as its split, the images as they are
    splits = load_splits("folder", tiny)
    assert (len(splits.train), len(splits.val)) == (240, 60) and splits.class_names == [str(d) for d in range(10)]
    assert "train/ and val/ folders" in splits.description
    image = Image.open(next((tiny / "val" / "3").iterdir()))
    assert (image.mode, image.size) == ("L", (32, 32))


def test_a_matching_folder_is_reused_and_a_changed_one_rebuilt(folders, tmp_path):
    tiny = folders.build_case("tiny", tmp_path)
    first = next((tiny / "train" / "0").iterdir())
    stamp = first.stat().st_mtime_ns
    assert folders.build_case("tiny", tmp_path) == tiny and first.stat().st_mtime_ns == stamp
    other = folders.build_case("tiny", tmp_path, seed=1)  # another split: the manifest differs
    assert files(other, "val") != files(folders.build_case("tiny", tmp_path / "again"), "val")
    assert not list(tmp_path.glob(".tiny.partial-*"))


def test_colour_images_have_their_own_readable_colours(folders):
    case = folders.Case(size=24, colour=True, per_class=None, about="")
    ink = np.zeros((8, 8))
    ink[2:6, 3:5] = 16
    drawn = [np.asarray(folders.draw(ink, i, case, seed=0), dtype=float) for i in range(5)]
    assert all(d.shape == (24, 24, 3) for d in drawn)
    backgrounds = {tuple(d[0, 0].round()) for d in drawn}
    assert len(backgrounds) == 5  # each image its own background
    luma = np.array([0.299, 0.587, 0.114])
    for d in drawn:  # the middle of the stroke stands out from the corner by the contrast asked for
        assert abs(d[12, 12] @ luma - d[0, 0] @ luma) >= folders.MIN_CONTRAST - 1
    again = np.asarray(folders.draw(ink, 3, case, seed=0), dtype=float)
    assert np.array_equal(again, drawn[3])  # seeded by the image, not by the order drawn
