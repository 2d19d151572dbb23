"""Pictures of a run: loss and accuracy against epoch."""
from __future__ import annotations

import io
from pathlib import Path

from ..fileio import atomic_write_bytes


def plot_curves(rows: list[dict], path: str | Path, title: str = "") -> dict[str, list[float]]:
    """Two panels (loss, top-1) with train and val lines, from summary.csv's rows.

    Returns the plotted series by name ("train_loss", "val_top1", ...), as drawn.
    """
    from matplotlib.figure import Figure  # when drawing: curves.png is drawn at most every 30 s, first at the end

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4))  # no pyplot: the caller's backend and figure state stay untouched
    ax_loss, ax_acc = fig.subplots(1, 2)
    drawn: dict[str, list[float]] = {}
    for split, style in (("train", "-o"), ("val", "-s")):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "top1")):
            (line,) = ax.plot(epochs, [r[f"{split}_{metric}"] for r in rows], style, label=split, markersize=3)
            drawn[f"{split}_{metric}"] = [float(v) for v in line.get_ydata()]
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)", title="loss")
    ax_loss.set_yscale("log")  # early val losses of a fresh BN net can be 100x the final ones
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return drawn
