"""The classification report and confusion matrix that train and eval write: the numbers against
scikit-learn's, the PNG's size and content."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.reports import classification_report, confusion_figure_layout, confusion_matrix, plot_confusion_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_matches_sklearn() -> None:
    from sklearn.metrics import classification_report as sk_report
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 4, 200))
    preds[preds == 3] = 2  # class 3 is never predicted: precision must be 0, not NaN
    names = ["a", "b", "c", "d"]
    rows = classification_report(torch.from_numpy(targets), preds.tolist(), names)
    expected = sk_report(targets, preds, labels=range(4), target_names=names, output_dict=True, zero_division=0)
    assert [r["class"] for r in rows] == names + ["macro avg", "weighted avg"]
    for row in rows:
        ref = expected[row["class"]]
        assert row["precision"] == pytest.approx(ref["precision"])
        assert row["recall"] == pytest.approx(ref["recall"])
        assert row["f1"] == pytest.approx(ref["f1-score"])
        assert row["support"] == ref["support"]
    json.dumps(rows)  # plain types: the trainer puts these rows into its summary JSON
    np.testing.assert_array_equal(confusion_matrix(targets, preds, 4), sk_confusion(targets, preds, labels=range(4)))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 4], [0, 1], 4)


@pytest.mark.parametrize("num_classes", [2, 100])
def test_confusion_png_size_and_content(tmp_path: Path, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(num_classes), 3)
    cm = confusion_matrix(targets, np.where(rng.random(targets.size) < 0.7, targets, 0), num_classes)
    names = [f"class_{i}" for i in range(num_classes)]
    path = plot_confusion_matrix(cm, names, tmp_path / "cm.png", dpi=50)
    assert path.read_bytes()[:8] == PNG_MAGIC
    side = confusion_figure_layout(num_classes)[0]
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (round(side * 50), round(side * 50))
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # something was drawn
    assert list(tmp_path.iterdir()) == [path]  # no temp file left
