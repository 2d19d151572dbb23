"""The run folder: everything `resnets train` writes, in one place. Only rank 0 writes into it.

    config.yaml            the resolved options (`resnets train -c` takes it back) and what the machine chose
    summary.csv, curves.png  one row / point per epoch
    tensorboard/           with --log-tensorboard
    best.safetensors       the weights of the best epoch by val top-1 (architecture, classes, preprocessing inside)
    last.safetensors       the weights after the last epoch
    checkpoint-E-S.pt      what --resume continues from (the newest --keep-checkpoints)
    bad_files.csv          unreadable images, with the reason
    metrics.json, per_class.csv, confusion_matrix.csv/.png   the final report of the best weights
"""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..data.bad_files import BAD_FILES_CSV
from ..errors import ConfigError
from ..evaluation import EvalResult
from ..fileio import atomic_copy, atomic_write_json, atomic_write_text
from ..models.weights import RUN_WEIGHTS, save_weights
from ..reports import write_class_reports
from .checkpoint import abandon_newer_checkpoints, remove_stray_temp_files, save_checkpoint
from .config import Recorded
from .plots import plot_curves

SUMMARY_FIELDS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "seconds"]
TENSORBOARD_SCALARS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
BEST, LAST = RUN_WEIGHTS


class RunDir:
    """A run folder and its writers. `tensorboard` is set by `open_tensorboard`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensorboard: Any = None

    @classmethod
    def create(cls, output: str | Path, name: str | None, model_name: str) -> "RunDir":
        """A new folder under `output`: `name`, or the time and the model; `-1`, `-2`, ... when taken."""
        base = Path(output)
        name = name or f"{datetime.now():%Y%m%d-%H%M%S}-{model_name}"
        base.mkdir(parents=True, exist_ok=True)
        path, k = base / name, 1
        while True:  # mkdir is the test: two runs started in the same second each get their own folder
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                path, k = base / f"{name}-{k}", k + 1

    @property
    def bad_files_csv(self) -> Path:
        return self.path / BAD_FILES_CSV

    def tidy_for_resume(self, resumed_from: Path) -> None:
        """Before continuing from `resumed_from`: temp files of interrupted writes go, newer checkpoints (of an
        attempt that went on past it) move to abandoned/."""
        for stray in remove_stray_temp_files(self.path):
            print(f"removed {stray.name}, left by an interrupted write", file=sys.stderr)
        for newer in abandon_newer_checkpoints(self.path, resumed_from):
            print(f"moved {newer.name} (newer than the checkpoint resumed from) to {newer.parent}", file=sys.stderr)

    def write_config(self, options: dict[str, Any], recorded: Recorded) -> None:
        """config.yaml: the options, then what this machine made of them."""
        text = yaml.safe_dump({**options, **dataclasses.asdict(recorded)}, sort_keys=False)
        atomic_write_text(self.path / "config.yaml", text)

    def open_tensorboard(self, model: nn.Module, example: torch.Tensor) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # an optional extra
        except ImportError:
            raise ConfigError("--log-tensorboard needs the tensorboard package: pip install "
                              "'resnets[tensorboard]'") from None
        self.tensorboard = SummaryWriter(str(self.path / "tensorboard"))
        was_training = model.training
        self.tensorboard.add_graph(model.eval(), example)
        model.train(was_training)

    def save_weights(self, model: nn.Module, best: bool) -> None:
        """last.safetensors, and a copy as best.safetensors when this epoch is the best so far."""
        last = save_weights(model, self.path / LAST)
        if best:
            atomic_copy(last, self.path / BEST)

    def save_checkpoint(self, state: dict[str, Any], keep: int) -> Path:
        return save_checkpoint(self.path, state, keep)

    def write_epoch(self, history: list[dict[str, Any]], title: str) -> None:
        """summary.csv and curves.png of every epoch so far; the newest epoch's scalars to TensorBoard."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.path / "summary.csv", buf.getvalue())
        plot_curves(history, self.path / "curves.png", title=title)
        if self.tensorboard is not None:
            row = history[-1]
            for key in TENSORBOARD_SCALARS:
                self.tensorboard.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def write_report(self, metrics: dict[str, Any], result: EvalResult, class_names: list[str]) -> dict[str, Any]:
        """The final report of the best weights: per-class CSV, confusion matrix, then metrics.json (last: its
        presence means the run finished). Returns the metrics with the per-class rows."""
        rows, _ = write_class_reports(result.targets.tolist(), result.predictions.tolist(), class_names, self.path)
        metrics = {**metrics, "per_class": rows}
        atomic_write_json(self.path / "metrics.json", metrics)
        return metrics
