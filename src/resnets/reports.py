"""Per-class metrics and confusion matrices, as rows, CSV and PNG. Shared by `resnets eval` and training.

Every file is written atomically (`fileio`), so an interrupted run never leaves a truncated CSV or PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .fileio import atomic_write, atomic_write_csv
from .messages import printable

REPORT_FIELDS = ("class", "precision", "recall", "f1", "support")
AVERAGES = ("macro avg", "weighted avg")  # sklearn's names for the two summary rows


def _as_labels(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)


def confusion_matrix(targets: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    targets, predictions = _as_labels(targets, "targets"), _as_labels(predictions, "predictions")
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.size} targets but {predictions.size} predictions")
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} hold class indices outside 0..{num_classes - 1}")
    flat = np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def classification_report(targets: Any, predictions: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class (precision, recall, f1, support), then macro and weighted averages.

    Values are plain Python floats/ints so the rows go into JSON as they are. A class never predicted has
    precision 0 (sklearn's zero_division=0), not NaN, so averages stay defined.
    """
    # scikit-learn (and the SciPy beneath it) takes a second to import: only when a report is written
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    cm = confusion_matrix(targets, predictions, len(class_names))  # also validates the indices
    targets, predictions = _as_labels(targets, "targets"), _as_labels(predictions, "predictions")
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=labels, zero_division=0)
    rows = [dict(zip(REPORT_FIELDS, (str(name), float(p), float(r), float(f), int(s))))
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    total = int(cm.sum())
    for name, weights in zip(AVERAGES, (np.ones(len(labels)), support.astype(np.float64))):
        w = weights / weights.sum() if weights.sum() > 0 else weights
        rows.append({"class": name, "precision": float(precision @ w), "recall": float(recall @ w),
                     "f1": float(f1 @ w), "support": total})
    return rows


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """The report rows as an aligned text table, averages set apart by a blank line."""
    width = max([len("class"), *(len(str(r["class"])) for r in rows)])
    lines = [f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    for row in rows:
        if row["class"] == AVERAGES[0]:
            lines.append("")
        lines.append(f"{row['class']:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                     f"{row['f1']:>6.4f}  {row['support']:>7}")
    return "\n".join(lines)


def write_report_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    table = [REPORT_FIELDS, *([row.get(k, "") for k in REPORT_FIELDS] for row in rows)]
    return atomic_write_csv(path, table)


def write_confusion_csv(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Header `true\\predicted,<class>...`; then one row per true class."""
    table = [["true\\predicted", *class_names],
             *([name, *(int(v) for v in row)] for name, row in zip(class_names, np.asarray(cm)))]
    return atomic_write_csv(path, table)


def confusion_figure_layout(num_classes: int) -> tuple[float, float]:
    """(figure side in inches, annotation font size): ~0.45 in per cell up to 20 classes, then shrinking
    cells so 100 classes still fit a 3,600 px image with every tick labelled."""
    side = min(4.0 + 0.45 * num_classes, 12.0 + 0.24 * num_classes, 36.0)
    cell_pt = 72 * side * 0.75 / max(num_classes, 1)  # the axes take about 3/4 of the figure
    return side, max(3.0, min(10.0, cell_pt * 0.4))


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | Path, dpi: int = 100,
                          title: str | None = None) -> Path:
    """Confusion matrix PNG: cells coloured by row share (per-class recall), annotated with counts.

    Colour by row share rather than raw count so that small classes are as visible as large ones. Above
    30 classes only non-zero cells carry a number, which keeps 100 classes legible.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state; imported only when plotting

    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} class names")
    side, fontsize = confusion_figure_layout(n)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(side, side), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    tick_size = max(3.0, min(10.0, fontsize * 1.1))
    labels = [printable(str(c)) for c in class_names]  # a newline in a folder's name would break its tick label
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 45, ha="center" if n > 10 else "right",
                  fontsize=tick_size)
    ax.set_yticks(range(n), labels, fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"Confusion matrix ({int(cm.sum()):,} images)")
    digits = len(str(int(cm.max()))) if cm.size else 1
    size = fontsize * min(1.0, 3 / max(digits, 3))  # 4+ digit counts shrink to stay inside their cell
    for i, j in zip(*np.nonzero(cm) if n > 30 else np.indices(cm.shape).reshape(2, -1)):
        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=size,
                color="white" if share[i, j] > 0.5 else "black", in_layout=False)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


REPORT_CSV, CONFUSION_CSV, CONFUSION_PNG = "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png"


def write_class_reports(targets: Any, predictions: Any, class_names: Sequence[str], out_dir: str | Path,
                        title: str | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per-class report CSV, confusion matrix CSV and PNG in `out_dir`; returns (report rows, matrix).

    One place for what a training run and `resnets eval` both write about a model's predictions.
    """
    out_dir = Path(out_dir)
    rows = classification_report(targets, predictions, class_names)
    cm = confusion_matrix(targets, predictions, len(class_names))
    write_report_csv(rows, out_dir / REPORT_CSV)
    write_confusion_csv(cm, class_names, out_dir / CONFUSION_CSV)
    plot_confusion_matrix(cm, class_names, out_dir / CONFUSION_PNG, title=title)
    return rows, cm
