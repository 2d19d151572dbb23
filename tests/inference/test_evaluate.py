"""`resnets eval` on the tiny trained model: the reports it writes agree with each other and with predict."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnets.reports import confusion_figure_layout

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order
PER_CLASS = 5


def test_eval_writes_consistent_reports(run_cli, read_csv, work: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "eval", "--weights", work["run"], "--data-dir", work["data"], "-j", "0",
                             "-b", "4")
    assert code == 0, err
    out_dir = work["run"] / "eval"
    summary = json.loads((out_dir / "eval.json").read_text())
    n = len(CLASSES) * PER_CLASS
    assert summary["num_samples"] == n
    assert summary["weights"] == str(work["run"] / "best.safetensors")
    assert summary["data_dir"] == str(work["data"])
    assert summary["top5"] == 100.0  # 3 classes: the true one is always among the top 3
    assert summary["loss"] > 0
    assert [r["class"] for r in summary["per_class"]] == CLASSES + ["macro avg", "weighted avg"]

    # The confusion matrix CSV, the per-class recall and top-1 all tell the same story.
    rows = list(csv.reader(open(out_dir / "confusion_matrix.csv", newline="")))
    assert rows[0] == ["true\\predicted", *CLASSES]
    cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert [row[0] for row in rows[1:]] == CLASSES
    assert cm.sum() == n and (cm.sum(axis=1) == PER_CLASS).all()
    # The model tells the three patterns apart; each class's last image shows the next class's pattern.
    np.testing.assert_array_equal(cm, (PER_CLASS - 1) * np.eye(3, dtype=int) + np.roll(np.eye(3, dtype=int), 1, 1))
    assert summary["top1"] == pytest.approx(100 * np.trace(cm) / n)
    assert summary["per_class"][-1]["recall"] == pytest.approx(np.trace(cm) / n)  # weighted recall = accuracy
    report = read_csv(out_dir / "per_class.csv")
    assert [r["class"] for r in report][:3] == CLASSES
    assert [int(r["support"]) for r in report[:3]] == [PER_CLASS] * 3

    with Image.open(out_dir / "confusion_matrix.png") as img:
        side = confusion_figure_layout(len(CLASSES))[0]
        assert img.format == "PNG" and img.size == (round(side * 100), round(side * 100))
    assert f"top-1 {summary['top1']:.2f}%" in out and "weighted avg" in out

    # top-1 agrees with what `predict` says about the same files, one by one.
    code, out, _ = run_cli(capsys, "predict", "--weights", work["run"], "--topk", "1", work["data"])
    assert code == 0
    predicted = {r["file"]: r["top1_class"] for r in csv.DictReader(out.splitlines())}
    correct = sum(predicted[str(f)] == f.parent.name for f in work["files"])
    assert summary["top1"] == pytest.approx(100 * correct / n)


def test_eval_output_dir_and_bare_weights(run_cli, work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out_dir = tmp_path / "somewhere"
    code, _, err = run_cli(capsys, "eval", "--weights", work["bare"], "--model", "cifar_resnet20",
                           "--data-dir", work["data"] / "val", "-j", "0", "--output", out_dir)
    assert code == 0, err
    summary = json.loads((out_dir / "eval.json").read_text())
    assert summary["num_samples"] == len(CLASSES) * PER_CLASS
    # A bare state dict has no class names: the folder's sorted names are used.
    assert summary["class_names"] == CLASSES
    assert not (work["bare"].parent / "eval").exists()
