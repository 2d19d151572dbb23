"""Unreadable files while training, evaluating and predicting: each is skipped, never replaced by another
sample, listed in bad_files.csv with its reason, and too many of them stop the run with one line."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import resnets
import resnets.training.run as training_run
from resnets.hub import Pretrained
from resnets.cli import main
from resnets.data import DataError, eval_transform
from resnets.data.bad_files import BadFiles, SkipUnreadable, Unreadable, collate_skipping
from resnets.data.datasets import ImageFiles
from resnets.errors import ConfigError
from resnets.hub import load_model
from resnets.inference.evaluate import evaluate_weights
from resnets.inference.predict import predict_images
from resnets import create_model
from resnets.models import get_config
from resnets.models.weights import load_weights
from resnets.training.config import TrainConfig

DATA_CFG = get_config("cifar_resnet20").default_pretrained_cfg()
RUN = dict(model="cifar_resnet20", epochs=1, img_size=32, batch_size=8, lr=0.05, progress=False)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


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


def test_bad_files_list_neutralises_formulas_and_a_resumed_run_reads_the_names_back(tmp_path) -> None:
    """File names come from the user's data: a spreadsheet must not run them (OWASP's CSV-injection rule), and
    a resumed run must still know them by their own names, not count them again."""
    names = ["=HYPERLINK(\"x\").jpg", "+1.jpg", "-cmd.jpg", "@SUM(A1).jpg", "'quoted.jpg", "cr\r=1+1.jpg"]
    log = BadFiles(total=100, max_fraction=0.5, csv_path=tmp_path / "bad_files.csv")
    log.add([Unreadable(name, "-not an image") for name in names])
    log.write()
    with open(tmp_path / "bad_files.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "reason"] and len(rows) == 1 + len(names)
    assert not [cell for row in rows for cell in row if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    resumed = BadFiles(total=100, max_fraction=0.5)
    resumed.attach(tmp_path / "bad_files.csv")
    assert resumed.reasons == dict.fromkeys(names, "-not an image")


# ---------------------------------------------------------------- training

TRAIN_BROKEN = {"a": ["empty.jpg", "truncated.jpg"], "b": ["text.png"]}
VAL_BROKEN = {"a": ["truncated.png"]}


def make_dataset(root: Path, write_valid, write_broken) -> tuple[Path, list[str], int]:
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

    monkeypatch.setattr(training_run, "build_model", create)
    return sizes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, write_valid, write_broken) -> tuple[Path, list[str], int]:
    return make_dataset(tmp_path_factory.mktemp("bad_run"), write_valid, write_broken)


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
# (here for the `trained` run above)

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
        training_run.start_from(model, TrainConfig(pretrained=str(weights), remap_classes=remap), Pretrained(weights),
                                class_names)
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
