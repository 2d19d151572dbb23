"""Bad data: every odd or broken file has one defined outcome in load_image, training, eval, predict and
check-data. The whole corpus is generated here, with PIL and numpy, so each case is visible in the test.
"""
from __future__ import annotations

import csv
import json
import pickle
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

import resnets
import resnets.training.run as training_run
from resnets.cli import main
from resnets.data import (BrokenImageError, DataError, eval_transform, list_images, load_image, load_splits,
                          train_transform)
from resnets.data.bad_files import BadFiles, SkipUnreadable, Unreadable, collate_skipping
from resnets.data.check import check_data
from resnets.data.datasets import ImageFiles
from resnets.errors import ConfigError
from resnets.models import create_model, get_config
from resnets.hub import load_model
from resnets.models.weights import load_weights
from resnets.inference.evaluate import evaluate_weights
from resnets.inference.predict import predict_images
from resnets.training.config import TrainConfig

DATA_CFG = get_config("cifar_resnet20").default_pretrained_cfg()
RUN = dict(model="cifar_resnet20", epochs=1, img_size=32, batch_size=8, lr=0.05, progress=False)


# ---------------------------------------------------------------- the corpus

def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_16bit_rgb(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow cannot save one."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def truncated(path: Path, source: Image.Image, fraction: float = 0.6) -> Path:
    """The first `fraction` of a real file's bytes: the header parses, the pixels run out."""
    source.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def exif_rotated(path: Path) -> Path:
    """20 wide x 10 high, red top-left corner, EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = np.full((10, 20, 3), 40, np.uint8)
    img[:3, :3] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(path, quality=95, exif=exif)
    return path


def palette_with_transparency(path: Path) -> Path:
    """Palette PNG whose transparency is a byte string (index 0 fully transparent, 1 half, 2 opaque)."""
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    img.save(path, transparency=b"\x00\x80")
    return path


def write_valid(folder: Path) -> dict[str, Path]:
    """One file per odd-but-valid case, each with known pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {name: folder / name for name in (
        "gray.png", "gray_alpha.png", "rgba.png", "palette_t.png", "gray16.png", "gray16.pgm", "rgb16.png",
        "cmyk.jpg", "bilevel.png", "one_pixel.png", "thin.jpg", "UPPER.JPG", "rotated.jpg", "plain.png")}
    Image.fromarray(np.full((6, 6), 77, np.uint8)).save(f["gray.png"])
    Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA").save(f["gray_alpha.png"])
    Image.fromarray(np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128]]], np.uint8), "RGBA").save(f["rgba.png"])
    palette_with_transparency(f["palette_t.png"])
    gray16 = np.array([[0, 32768, 65535, 257, 300]], np.uint16)  # 300: what convert("RGB") would clip to 255
    Image.fromarray(gray16).save(f["gray16.png"])
    Image.fromarray(gray16).save(f["gray16.pgm"])
    png_16bit_rgb(f["rgb16.png"], np.array([[[0, 32768, 65535], [65535, 300, 32767]]], np.uint16))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(f["cmyk.jpg"], quality=95)  # red
    Image.fromarray(np.array([[0, 1, 1]], bool)).save(f["bilevel.png"])
    Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)).save(f["one_pixel.png"])
    Image.fromarray(noise(1, 500)).save(f["thin.jpg"])
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).save(f["UPPER.JPG"], quality=95)
    exif_rotated(f["rotated.jpg"])
    Image.fromarray(noise(7, 5)).save(f["plain.png"])
    return f


def write_broken(folder: Path) -> dict[str, tuple[Path, str]]:
    """One file per broken case, with a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    truncated(folder / "truncated.jpg", Image.fromarray(noise(64, 64)))
    truncated(folder / "truncated.png", Image.fromarray(noise(64, 64)))
    (folder / "text.jpg").write_text("these are notes, not a photo\n")
    (folder / "text.png").write_text("<html>a download error page</html>\n")
    Image.fromarray(np.ones((4, 4), np.float32)).save(folder / "float.tif")
    return {"empty.jpg": (folder / "empty.jpg", "empty"), "truncated.jpg": (folder / "truncated.jpg", "truncated"),
            "truncated.png": (folder / "truncated.png", "truncated"), "text.jpg": (folder / "text.jpg", "not an image"),
            "text.png": (folder / "text.png", "not an image"), "float.tif": (folder / "float.tif", "unsupported")}


def pixels(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# ---------------------------------------------------------------- decoding

@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    return write_valid(tmp_path_factory.mktemp("valid"))


def test_valid_odd_images_decode_to_the_right_rgb_pixels(valid: dict[str, Path]) -> None:
    assert (pixels(valid["gray.png"]) == 77).all()
    # Alpha over white: opaque keeps its colour, transparent is white, whatever colour it stored.
    assert pixels(valid["gray_alpha.png"])[0].tolist() == [[100, 100, 100], [255, 255, 255]]
    rgba = pixels(valid["rgba.png"])[0]
    assert rgba[0].tolist() == [10, 20, 30] and rgba[1].tolist() == [255, 255, 255]
    assert np.abs(rgba[2] - 127).max() <= 1  # half-transparent black over white
    assert pixels(valid["bilevel.png"])[0, :, 0].tolist() == [0, 255, 255]
    assert pixels(valid["one_pixel.png"]).tolist() == [[[1, 2, 3]]]
    assert pixels(valid["plain.png"]).tolist() == noise(7, 5).tolist()  # lossless: exact
    assert np.abs(pixels(valid["UPPER.JPG"]) - (200, 10, 10)).max() <= 6


@pytest.mark.parametrize("name", ["gray16.png", "gray16.pgm"])
def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(valid: dict[str, Path], name: str) -> None:
    with Image.open(valid[name]) as raw:
        assert raw.mode in ("I;16", "I")  # what Pillow would clip with convert("RGB")
    got = pixels(valid[name])[0]
    assert (got == got[:, :1]).all()  # grey stays grey
    assert got[:, 0].tolist() == [0, 128, 255, 1, 1]  # 32768 -> 128 (not 255), 300 -> 1 (not 255)


def test_16_bit_rgb_is_scaled_the_same_way(valid: dict[str, Path]) -> None:
    assert pixels(valid["rgb16.png"])[0].tolist() == [[0, 128, 255], [255, 1, 127]]


def test_cmyk_jpeg_becomes_plausible_rgb(valid: dict[str, Path]) -> None:
    with Image.open(valid["cmyk.jpg"]) as raw:
        assert raw.mode == "CMYK"
    r, g, b = pixels(valid["cmyk.jpg"])[4, 4]
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_palette_with_transparency_goes_through_rgba_without_warning(valid: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns "should be converted to RGBA images" on a direct convert
        got = pixels(valid["palette_t.png"])[0]
    assert got[0].tolist() == [255, 255, 255]  # index 0: transparent black -> background
    assert np.abs(got[1] - (127, 255, 127)).max() <= 1  # index 1: green at alpha 128 over white
    assert got[2].tolist() == [0, 0, 255]  # index 2: opaque blue


def test_exif_orientation_is_applied(valid: dict[str, Path]) -> None:
    with Image.open(valid["rotated.jpg"]) as raw:
        assert raw.size == (20, 10)
    got = pixels(valid["rotated.jpg"])
    assert got.shape == (20, 10, 3)  # now 10 wide, 20 high
    assert got[1, -2, 0] > 200 and got[1, -2, 1] < 60  # the red corner moved to the top right
    assert got[1, 1, 0] < 100


@pytest.mark.parametrize("transform", ["train", "eval"])
@pytest.mark.parametrize("name", ["thin.jpg", "one_pixel.png", "rotated.jpg"])
def test_tiny_and_thin_images_go_through_the_transforms(valid: dict[str, Path], name: str, transform: str) -> None:
    make = train_transform if transform == "train" else eval_transform
    for size in (32, 96):  # pad-crop path and RandomResizedCrop path
        out = make(DATA_CFG, size)(load_image(valid[name]))
        assert out.shape == (3, size, size) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_broken(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "text.png",
                                  "float.tif"])
def test_broken_files_raise_one_error_type_with_a_short_reason(broken, name: str) -> None:
    path, word = broken[name]
    with pytest.raises(BrokenImageError) as info:
        load_image(path)
    e = info.value
    assert isinstance(e, DataError) and e.path == str(path) and word in e.reason
    assert str(e).startswith(f"{path}: ") and "\n" not in str(e) and len(e.reason) < 120
    copy = pickle.loads(pickle.dumps(e))  # crosses DataLoader worker processes
    assert (copy.path, copy.reason, str(copy)) == (e.path, e.reason, str(e))


def test_truncated_jpeg_passes_verify_but_not_load(broken) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing imported by resnets may switch it on
    path = broken["truncated.jpg"][0]
    with Image.open(path) as img:
        img.verify()  # Pillow's quick check says fine: only a full decode finds it
    with pytest.raises(BrokenImageError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize("side", [40, 50])  # 1,600 px: Pillow only warns; 2,500 px: Pillow refuses
def test_decompression_bomb_is_broken_and_never_decoded(tmp_path, monkeypatch, side: int) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(noise(side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BrokenImageError, match="decompression bomb"):
            load_image(path)
    assert decoded == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image(path).size == (side, side)
    assert decoded  # the patched load does see real decodes


def test_hidden_and_non_image_files_are_not_images(tmp_path) -> None:
    (tmp_path / "cls" / ".hidden").mkdir(parents=True)
    Image.fromarray(noise(4, 4)).save(tmp_path / "cls" / "UP.PNG")
    for name in (".DS_Store", "notes.txt", "._UP.PNG", ".hidden/x.jpg"):
        (tmp_path / "cls" / name).write_bytes(b"\x00junk")
    assert list_images([tmp_path]) == [tmp_path / "cls" / "UP.PNG"]


# ---------------------------------------------------------------- skipping in a DataLoader

def test_collate_drops_unreadable_items_and_survives_an_all_broken_batch(tmp_path, broken) -> None:
    good = [Image.fromarray(noise(8, 8, seed)).save(tmp_path / f"{seed}.png") or tmp_path / f"{seed}.png"
            for seed in range(2)]
    bad = [broken[n][0] for n in ("empty.jpg", "text.png", "truncated.jpg", "text.jpg")]
    samples = [(str(p), 0) for p in bad] + [(str(p), 1) for p in good]  # batches of 2: bad, bad, good
    dataset = ImageFiles(samples, eval_transform(DATA_CFG, 8))
    assert isinstance(dataset[0], Unreadable) and dataset[0].file == str(bad[0])
    for keep_empty, expected_sizes in ((False, [2]), (True, [0, 0, 2])):
        bad_files = BadFiles(total=len(samples), max_fraction=0.9)
        loader = SkipUnreadable(DataLoader(dataset, batch_size=2, collate_fn=collate_skipping), bad_files,
                                keep_empty=keep_empty)
        batches = list(loader)
        assert [len(labels) for _, labels in batches] == expected_sizes
        assert batches[-1][0].shape == (2, 3, 8, 8) and batches[-1][1].tolist() == [1, 1]
        assert sorted(bad_files.reasons) == sorted(map(str, bad)) and len(loader) == 3


def test_bad_files_stops_beyond_the_share_and_writes_its_list_first(tmp_path) -> None:
    log = BadFiles(total=10, max_fraction=0.2, csv_path=tmp_path / "bad_files.csv")
    log.add([Unreadable("a.jpg", "empty file (0 bytes)"), Unreadable("b.jpg", "x")])  # 20%: not more
    log.add([Unreadable("a.jpg", "empty file (0 bytes)")])  # the same file again is not another one
    assert len(log) == 2 and not (tmp_path / "bad_files.csv").exists()
    with pytest.raises(DataError, match=r"3 of 10 images are unreadable .*more than max_bad_fraction 0.2"):
        log.add([Unreadable("c.jpg", "truncated")])
    rows = list(csv.DictReader((tmp_path / "bad_files.csv").open()))
    assert [r["file"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg"] and rows[0]["reason"] == "empty file (0 bytes)"

    messages: list[str] = []
    resumed = BadFiles(total=10, max_fraction=0.5, warn=messages.append)
    resumed.attach(tmp_path / "bad_files.csv")  # a resumed run starts from its list, and does not warn again
    resumed.add([Unreadable("b.jpg", "x")])
    resumed.report()
    assert len(resumed) == 3 and messages == []
    resumed.add([Unreadable("d.jpg", "not an image")])
    resumed.report()
    assert messages == [f"skipped 1 more unreadable image, 4 in all (see {tmp_path / 'bad_files.csv'})"]
    assert len(list(csv.DictReader((tmp_path / "bad_files.csv").open()))) == 4


# ---------------------------------------------------------------- training

TRAIN_BROKEN = {"a": ["empty.jpg", "truncated.jpg"], "b": ["text.png"]}
VAL_BROKEN = {"a": ["truncated.png"]}


def make_dataset(root: Path) -> tuple[Path, list[str], int]:
    """train/ (29 good + 3 broken = 32, four full batches of 8) and val/ (8 good + 1 broken), two classes.

    The good files include every odd-but-valid case. Returns (root, broken files, good train files).
    """
    valid = write_valid(root / "valid_src")
    odd = sorted(valid.values())
    corpus = write_broken(root / "broken_src")
    bad = []
    rng = np.random.default_rng(0)
    for split, per_class, broken_names in (("train", {"a": 15, "b": 14}, TRAIN_BROKEN),
                                           ("val", {"a": 4, "b": 4}, VAL_BROKEN)):
        for cls, n in per_class.items():
            folder = root / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                if split == "train" and odd:
                    src = odd.pop()
                    shutil.copy(src, folder / f"odd_{src.name}")
                else:
                    img = np.full((36, 36, 3), (200, 40, 40) if cls == "a" else (40, 40, 200), np.uint8)
                    img = np.clip(img.astype(int) + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(folder / f"{i}.png")
            for name in broken_names.get(cls, []):
                shutil.copy(corpus[name][0], folder / f"bad_{name}")
                bad.append(str(folder / f"bad_{name}"))
            for junk in (".DS_Store", "notes.txt", "._0.png"):  # ignored, never "unreadable"
                (folder / junk).write_bytes(b"\x00\x05junk")
    shutil.rmtree(root / "valid_src")
    shutil.rmtree(root / "broken_src")
    return root / "data", sorted(bad), 29


def count_training_images(monkeypatch) -> list[int]:
    """Batch sizes of every training-mode forward pass of the model `resnets.train` builds."""
    sizes: list[int] = []

    def create(*args, **kwargs):
        model = create_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: sizes.append(inputs[0].shape[0]) if m.training else None)
        return model

    monkeypatch.setattr(training_run, "create_model", create)
    return sizes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[str], int]:
    return make_dataset(tmp_path_factory.mktemp("bad_run"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A clean run on the good files only, for eval, predict and fine-tuning."""
    data, bad, _ = dataset
    clean = tmp_path_factory.mktemp("clean") / "data"
    shutil.copytree(data, clean, ignore=lambda d, names: [n for n in names if n.startswith("bad_")])
    return resnets.train(data_dir=str(clean), output=str(clean.parent / "runs"), workers=0, **RUN).run_dir


@pytest.mark.parametrize("workers", [0, 2])
def test_training_skips_broken_files_lists_them_and_never_replaces_them(dataset, tmp_path, monkeypatch, capsys,
                                                                        workers: int) -> None:
    data, bad, good_train = dataset
    seen = count_training_images(monkeypatch)
    result = resnets.train(data_dir=str(data), output=str(tmp_path), workers=workers, max_bad_fraction=0.5, **RUN)
    assert sum(seen) == good_train  # not 32: no broken file was swapped for another sample
    rows = list(csv.DictReader((result.run_dir / "bad_files.csv").open()))
    assert [r["file"] for r in rows] == bad  # exactly the broken ones: no junk, no valid odd image
    reasons = {Path(r["file"]).name: r["reason"] for r in rows}
    assert "empty" in reasons["bad_empty.jpg"] and "truncated" in reasons["bad_truncated.jpg"]
    assert "not an image" in reasons["bad_text.png"] and "truncated" in reasons["bad_truncated.png"]
    warnings_ = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert warnings_ == [f"warning: skipped 4 unreadable images (see {result.run_dir / 'bad_files.csv'})"]
    assert result.metrics["unreadable_files"] == 4
    cm = np.loadtxt(result.run_dir / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    assert cm.sum() == 8  # the val images that could be read
    if workers == 0:  # resumed for a second epoch: the list is kept, the same files are not news
        seen.clear()
        resnets.train(resume=str(result.run_dir), epochs=2, workers=0, progress=False)
        assert sum(seen) == good_train
        assert [r["file"] for r in csv.DictReader((result.run_dir / "bad_files.csv").open())] == bad
        assert not [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]


def test_a_batch_of_broken_files_only_is_skipped(tmp_path, monkeypatch, broken) -> None:
    for split, n in (("train", 2), ("val", 1)):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(noise(32, 32, seed=10 * k + i)).save(tmp_path / split / cls / f"{i}.png")
    shutil.copy(broken["text.jpg"][0], tmp_path / "train" / "a" / "text.jpg")
    shutil.copy(broken["empty.jpg"][0], tmp_path / "train" / "b" / "empty.jpg")
    seen = count_training_images(monkeypatch)
    result = resnets.train(data_dir=str(tmp_path), output=str(tmp_path / "runs"), workers=0, max_bad_fraction=0.4,
                           **{**RUN, "batch_size": 1})  # batch 1: each broken file leaves an empty batch
    assert seen == [1, 1, 1, 1] and result.metrics["unreadable_files"] == 2


def test_too_many_broken_files_stop_the_run_with_exit_code_2(dataset, tmp_path, capsys) -> None:
    data, bad, _ = dataset
    code = main(["train", "--data-dir", str(data), "--output", str(tmp_path), "--model", "cifar_resnet20",
                 "--epochs", "1", "--img-size", "32", "-b", "8", "-j", "0", "--no-progress"])  # default 1%
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("resnets train: error: ") and "max_bad_fraction 0.01" in err[-1]
    assert "traceback" not in "\n".join(err).lower()
    (run_dir,) = tmp_path.iterdir()
    listed = [r["file"] for r in csv.DictReader((run_dir / "bad_files.csv").open())]
    assert listed and set(listed) <= set(bad) and str(run_dir / "bad_files.csv") in err[-1]
    with pytest.raises(DataError, match="unreadable"):
        resnets.train(data_dir=str(data), output=str(tmp_path), workers=0, max_bad_fraction=0.0, **RUN)
    with pytest.raises(ConfigError, match="max-bad-fraction"):
        TrainConfig(max_bad_fraction=1.0).resolved()


# ---------------------------------------------------------------- eval and predict

def test_eval_skips_and_lists_broken_files_in_its_output_dir(dataset, trained, tmp_path, capsys) -> None:
    data, bad, _ = dataset
    summary = evaluate_weights(trained, data, workers=0, output_dir=tmp_path / "eval", max_bad_fraction=0.5)
    assert summary.num_samples == 8 and summary.unreadable_files == 1
    rows = list(csv.DictReader((tmp_path / "eval" / "bad_files.csv").open()))
    assert [r["file"] for r in rows] == [f for f in bad if "/val/" in f]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["unreadable_files"] == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert lines == [f"warning: skipped 1 unreadable image (see {tmp_path / 'eval' / 'bad_files.csv'})"]

    code = main(["eval", "--weights", str(trained), "--data-dir", str(data), "-j", "0",
                 "--output", str(tmp_path / "strict"), "--max-bad-fraction", "0.1"])  # 1 of 9 is 11%
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("resnets eval: error: ") and "unreadable" in err[-1]
    assert not (tmp_path / "strict" / "eval.json").exists()


def test_predict_skips_broken_images_naming_each_with_its_reason(dataset, trained) -> None:
    data, bad, _ = dataset
    messages: list[str] = []
    preds = predict_images(load_model(trained), [data / "val"], warn=messages.append, device="cpu")
    assert len(preds) == 8 and not any(Path(p.file).name.startswith("bad_") for p in preds)
    (message,) = messages
    assert message.startswith(f"skipped {bad[-1]}: ") and "truncated" in message


# ---------------------------------------------------------------- fine-tuning on other classes

def test_finetuning_a_head_trained_on_other_classes_needs_remap(dataset, trained, tmp_path) -> None:
    data, _, _ = dataset
    other = tmp_path / "other"
    for old, new in (("a", "cat"), ("b", "dog")):  # same head size (2), other class names
        shutil.copytree(data / "train" / old, other / new, ignore=lambda d, names: [n for n in names if "bad_" in n])
    weights = trained / "best.safetensors"
    with pytest.raises(ConfigError, match=r"other classes .*missing a, b; extra cat, dog.*--remap-classes"):
        resnets.train(data_dir=str(other), pretrained=str(weights), output=str(tmp_path / "runs"), workers=0, **RUN)

    def finetune(class_names: list[str], remap: bool) -> torch.nn.Module:
        model = create_model("cifar_resnet20", num_classes=2)
        training_run.load_pretrained(model, TrainConfig(pretrained=str(weights), remap_classes=remap), class_names)
        return model

    source = create_model("cifar_resnet20", num_classes=2)
    load_weights(source, weights)
    same, remapped = finetune(["a", "b"], remap=False), finetune(["cat", "dog"], remap=True)
    assert torch.equal(same.fc.weight, source.fc.weight) and same.class_names == ["a", "b"]
    assert not torch.equal(remapped.fc.weight, source.fc.weight) and remapped.class_names == ["cat", "dog"]
    assert torch.equal(remapped.conv1.weight, source.conv1.weight)  # the backbone is kept
    with pytest.raises(ConfigError, match="another order"):
        finetune(["b", "a"], remap=False)
    result = resnets.train(data_dir=str(other), pretrained=str(weights), remap_classes=True, val_fraction=0.25,
                           output=str(tmp_path / "runs"), workers=0, **RUN)
    assert result.metrics["class_names"] == ["cat", "dog"]


# ---------------------------------------------------------------- check-data

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
    for argv in ([tmp_path / "missing"], [tmp_path / "d", "--val-dir", tmp_path / "nope"], [tmp_path / "d", "-j", "-1"]):
        code, out, err = check_cli(capsys, *argv)
        assert code == 2 and out == "" and err.startswith("resnets check-data: error: ") and err.count("\n") == 1


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


def test_a_class_whose_every_file_is_broken_stops_the_run(tmp_path, capsys) -> None:
    for k, cls in enumerate(("a", "b")):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(noise(8, 8, seed=100 * k + i)).save(tmp_path / "train" / cls / f"{i}.png")
        Image.fromarray(noise(8, 8, seed=1000 + k)).save(tmp_path / "val" / cls / "0.png")
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "train" / "c" / "only.png").write_bytes(b"not a png")  # 1 of 203 files: under the 1% limit
    Image.fromarray(noise(8, 8, seed=2000)).save(tmp_path / "val" / "c" / "0.png")
    code = main(["train", "--data-dir", str(tmp_path), "--output", str(tmp_path / "runs"), "--model", "cifar_resnet20",
                 "--epochs", "2", "--img-size", "16", "-b", "32", "-j", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "every training image of class 'c' is unreadable" in err[-1]
    assert "epoch   2/2" not in "\n".join(err)  # stopped after the first epoch


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
