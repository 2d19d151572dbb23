"""What resnets writes is safe to open and fails cleanly: CSV cells that a spreadsheet would run as formulas are
neutralised in every CSV (train, eval, predict), and a write that fails on a full disk names its file and leaves
nothing behind."""
from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets.cli import main
from resnets.errors import ResnetsError, WriteError
from resnets.fileio import (FORMULA_STARTS, atomic_copy, atomic_write_bytes, atomic_write_json, atomic_write_text,
                            atomic_write_to, csv_text, csv_value)

# Class folders a spreadsheet would run as formulas (a folder name cannot hold "/", so no "http://" here)
# and one whose carriage return, unquoted, would start a new row with a formula.
HOSTILE_CLASSES = ['=HYPERLINK("x")', "+1", "-cmd", "@SUM(A1)", "cr\r=1+1"]


def cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def test_csv_text_neutralises_text_cells_and_keeps_numbers_numbers() -> None:
    text = csv_text([["=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain", "macro avg"],
                     [-0.5, -3, 0.25, 7, np.int64(-2), "-0.5"]])
    first, second = list(csv.reader(io.StringIO(text, newline="")))
    assert first == ["'=1+1", "'+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "''quoted", "plain", "macro avg"]
    assert text.startswith("'=1+1,'+1,'-cmd,'@SUM(A1),'\tx,\"'\rx\",")  # a CR inside a cell is quoted
    assert second == ["-0.500000", "-3", "0.250000", "7", "-2", "'-0.5"]  # numbers as numbers; text as text
    assert [csv_value(c) for c in first] == ["=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain",
                                             "macro avg"]


def _hostile_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in HOSTILE_CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / name / f"{'=' if i == 0 else ''}img{i}.png")
    (root / "+1" / "=broken.png").write_bytes(b"not an image")
    return root


def test_every_csv_of_train_eval_and_predict_neutralises_names_from_the_data(tmp_path, monkeypatch, capsys) -> None:
    """Class folders and file names are the user's data: no cell of any CSV resnets writes may start as a formula
    does, and the numbers (losses, probabilities, counts) stay numbers."""
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the file column starts with the folder's own name
    data = _hostile_folder(Path("@data"))
    result = resnets.train(data_dir=str(data), model="cifar_resnet20", epochs=1, batch_size=8, img_size=32,
                           output="runs", progress=False, workers=0, max_bad_fraction=0.5)
    Path("=evil.png").write_bytes((data / "+1" / "img1.png").read_bytes())
    assert main(["predict", "--weights", str(result.run_dir), "=evil.png", str(data)]) == 0
    printed = capsys.readouterr().out
    assert main(["predict", "--weights", str(result.run_dir), "--output", "pred.csv", "=evil.png", str(data)]) == 0
    assert main(["eval", "--weights", str(result.run_dir), "--data-dir", str(data), "--output", "eval",
                 "--max-bad-fraction", "0.5", "--workers", "0"]) == 0
    written = {str(p): p.read_bytes().decode() for p in Path(".").rglob("*.csv")}
    run = os.path.relpath(result.run_dir)
    assert set(written) == {f"{run}/{name}" for name in ("summary.csv", "per_class.csv", "confusion_matrix.csv",
                                                         "bad_files.csv", "predictions.csv")} | {
        "pred.csv", "eval/per_class.csv", "eval/confusion_matrix.csv", "eval/bad_files.csv", "eval/predictions.csv"}
    for name, text in {"predict's stdout": printed, **written}.items():
        formulas = [c for c in cells(text) if c.startswith(FORMULA_STARTS)]
        assert not formulas, f"{name}: {formulas}"

    def rows(name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(written[name], newline="")))

    report = rows("eval/per_class.csv")
    assert [csv_value(r["class"]) for r in report[:-2]] == sorted(HOSTILE_CLASSES)
    assert all(float(r["precision"]) >= 0 for r in report)
    predictions = rows("pred.csv")
    assert len(predictions) == 1 + 4 * len(HOSTILE_CLASSES) and printed.replace("\r\n", "\n") == written[
        "pred.csv"].replace("\r\n", "\n")
    assert predictions[0]["file"] == "'=evil.png" and predictions[1]["file"].startswith("'@data/")
    assert {csv_value(r["top1_class"]) for r in predictions} <= set(HOSTILE_CLASSES)
    assert abs(sum(float(predictions[0][f"top{k}_prob"]) for k in range(1, 6)) - 1) < 1e-3  # numbers still
    matrix = list(csv.reader(io.StringIO(written["eval/confusion_matrix.csv"], newline="")))
    assert [csv_value(c) for c in matrix[0][1:]] == sorted(HOSTILE_CLASSES)
    assert sum(int(v) for row in matrix[1:] for v in row[1:]) == 4 * len(HOSTILE_CLASSES)
    assert [csv_value(r["file"]) for r in rows("eval/bad_files.csv")] == [str(data / "+1" / "=broken.png")]
    assert float(rows(f"{run}/summary.csv")[0]["val_loss"]) > 0


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


WRITERS = {
    "text": lambda path: atomic_write_text(path, "a,b\n" * 1000),
    "bytes": lambda path: atomic_write_bytes(path, os.urandom(1 << 16)),
    "json": lambda path: atomic_write_json(path, {"top1": 0.5}),
    "copy": lambda path: atomic_copy(path.with_name("source.bin"), path),
    "to": lambda path: atomic_write_to(path, lambda tmp: Path(tmp).write_bytes(b"x" * 100)),
    "weights": lambda path: resnets.models.weights.save_weights(resnets.create_model("cifar_resnet20"), path),
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_that_fails_on_the_disk_names_its_file_and_leaves_the_old_one(tmp_path, monkeypatch, writer,
                                                                              code) -> None:
    path = tmp_path / "out" / "report.csv"
    path.parent.mkdir()
    path.write_bytes(b"the previous file")
    path.with_name("source.bin").write_bytes(b"copied")

    def fail(fd: int) -> None:  # where a full disk or quota shows on NFS and with delayed allocation
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(WriteError) as caught:
        WRITERS[writer](path)
    assert str(caught.value) == f"could not write {path}: {os.strerror(code)}"
    assert isinstance(caught.value, ResnetsError) and isinstance(caught.value, OSError)
    assert caught.value.errno == code
    assert path.read_bytes() == b"the previous file"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.csv", "source.bin"]  # no temp file


def test_a_full_disk_is_a_one_line_cli_error_naming_the_file(tmp_path, monkeypatch, capsys) -> None:
    model = resnets.create_model("cifar_resnet20", num_classes=2)
    weights = resnets.models.weights.save_weights(model, tmp_path / "w.safetensors", class_names=["a", "b"])
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    output = tmp_path / "preds" / "p.csv"
    torch.manual_seed(0)
    monkeypatch.setattr(os, "fsync", _no_space)
    code = main(["predict", "--weights", str(weights), "--output", str(output), str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"resnets predict: error: could not write {output}: No space left on device"]
    assert list(output.parent.iterdir()) == []
