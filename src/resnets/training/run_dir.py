"""The run folder: everything `resnets train` writes, in one place. Only rank 0 writes into it.

    config.yaml            the resolved options (`resnets train -c` takes it back) and what the machine chose
    summary.csv, curves.png  one row / point per epoch
    tensorboard/           with --log-tensorboard
    best.safetensors       the weights of the best epoch by val top-1 (architecture, classes, preprocessing inside)
    last.safetensors       the weights after the last epoch
    checkpoint-E-S.pt      what --resume continues from (the newest --keep-checkpoints)
    bad_files.csv          unreadable images, with the reason
    metrics.json, per_class.csv, confusion_matrix.csv/.png   the final report of the best weights
    predictions.csv, top_losses.png   every val image's prediction and loss; the worst mistakes
    report.html            all of it on one self-contained page (`resnets report` rebuilds it)
    .lock                  held by the process writing into the folder (its pid inside)
"""
from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..data.bad_files import BAD_FILES_CSV
from ..errors import ConfigError, TrainingError
from ..evaluation import EvalResult
from ..fileio import atomic_copy, atomic_write_csv, atomic_write_json, atomic_write_text, read_yaml_mapping
from ..models.weights import RUN_WEIGHTS, save_weights
from ..messages import warn
from ..per_image import PREDICTIONS_CSV, TOP_LOSSES_PNG, EvaluatedItems, confused_pairs, write_per_image
from ..report_page import write_report_page
from ..reports import write_class_reports
from .checkpoint import abandon_newer_checkpoints, remove_stray_temp_files, save_checkpoint
from .config import Recorded
from .plots import plot_curves

SUMMARY_FIELDS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "seconds"]
TENSORBOARD_SCALARS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
BEST, LAST = RUN_WEIGHTS
LOCK_FILE = ".lock"
REPORT_FILE = "metrics.json"  # written last: a run folder that has it is finished

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind; runs there go unlocked
    fcntl = None  # type: ignore[assignment]


# flock's lock belongs to the open file, which a fork shares: a DataLoader worker would hold it on after the run
# let go. Children close their copies; the lock is then the parent's alone.
_HELD_LOCKS: set[int] = set()


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


# Drawing curves.png takes ~0.2 s (matplotlib, 2-core CPU): after every epoch it was 5-10% of a short run's time
# (BENCHMARKS.md, "Time to accuracy on small folders"). Redrawn at most this often, and at the run's end.
CURVES_EVERY_S = 30.0


class RunDir:
    """A run folder and its writers. `tensorboard` is set by `open_tensorboard`; the writing process holds
    the folder's lock (`acquire`) from its start until `release`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensorboard: Any = None
        self._lock_fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._curves: tuple[list[dict[str, Any]], str] | None = None  # history not yet drawn, and its title
        self._curves_drawn_at = time.monotonic()

    def acquire(self) -> "RunDir":
        """Take the folder's advisory lock, or ConfigError naming the process that holds it: two runs writing
        into one folder would replace each other's results and checkpoints. The OS releases the lock when its
        process ends, however it ends, so a dead run's .lock file is simply taken over."""
        if fcntl is None or self._lock_fd is not None:
            return self
        lock = self.path / LOCK_FILE
        try:  # never through a link: a run folder handed over could point .lock at a file to overwrite
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                         0o644)
        except OSError as e:
            raise ConfigError(f"{lock}: cannot be this run's lock file ({e.strerror}); remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{lock}: not a regular file, so not this run's lock file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use: another run (pid {holder}) is writing into it; wait for it "
                              f"to end or stop it first") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._identity = _identity(self.path)
        _HELD_LOCKS.add(fd)
        return self

    def release(self) -> None:
        # A run that ended well or stopped for a signal has drawn its curves (close); here the run may be unwinding
        # from an error, which a failing drawing (the folder gone, the disk full) must not replace.
        self._curves = None
        try:
            self.close()
        finally:
            if self._lock_fd is not None:
                _HELD_LOCKS.discard(self._lock_fd)
                os.close(self._lock_fd)  # closing the descriptor is what lets go of the lock
                self._lock_fd = None

    def check_present(self) -> None:
        """Before each write: the folder is still the one this run locked. Deleted (or moved) mid-run, it
        would be re-created without config.yaml and earlier epochs, a folder that looks like a run but is not."""
        if self._lock_fd is None:
            return
        try:
            present = _identity(self.path) == self._identity  # the same folder, not one of the same name
        except OSError:
            present = False
        if not present:
            raise TrainingError(f"the run folder {self.path} was deleted or moved while this run was writing into "
                                f"it; stopping rather than writing a run folder without its earlier files")

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
                return cls(path).acquire()
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

    def recorded_recipe(self) -> str:
        """The recipe line config.yaml recorded when the run started ("" if none): a resume rewrites the file."""
        value = (read_yaml_mapping(self.path / "config.yaml") or {}).get("recipe_choices")
        return value if isinstance(value, str) else ""

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
        self.check_present()
        last = save_weights(model, self.path / LAST)
        if best:
            atomic_copy(last, self.path / BEST)

    def save_checkpoint(self, state: dict[str, Any], keep: int) -> Path:
        self.check_present()
        return save_checkpoint(self.path, state, keep)

    def write_epoch(self, history: list[dict[str, Any]], title: str) -> None:
        """summary.csv of every epoch so far, and curves.png at most every CURVES_EVERY_S (and at `close`); the
        newest epoch's scalars to TensorBoard."""
        self.check_present()
        table = [SUMMARY_FIELDS, *([row.get(k, "") for k in SUMMARY_FIELDS] for row in history)]
        atomic_write_csv(self.path / "summary.csv", table, float_format=".6g")
        self._curves = (list(history), title)
        if time.monotonic() - self._curves_drawn_at >= CURVES_EVERY_S:
            self.draw_curves()
        if self.tensorboard is not None:
            row = history[-1]
            for key in TENSORBOARD_SCALARS:
                self.tensorboard.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])

    def draw_curves(self) -> None:
        """curves.png of the history `write_epoch` last saw, if not drawn yet."""
        if self._curves is not None:
            self.check_present()
            plot_curves(self._curves[0], self.path / "curves.png", title=self._curves[1])
            self._curves, self._curves_drawn_at = None, time.monotonic()

    def close(self) -> None:
        """The writers' end: the curves drawn up to the last epoch, TensorBoard closed."""
        self.draw_curves()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def write_report(self, metrics: dict[str, Any], result: EvalResult, class_names: list[str],
                     items: EvaluatedItems | None = None, title: str = "") -> dict[str, Any]:
        """The final report of the best weights: per-class CSV, confusion matrix, with `items` (and a result that
        kept its losses) predictions.csv and top_losses.png, then metrics.json (its presence means the run
        finished) and report.html. Returns the metrics with the per-class rows and the most-confused pairs."""
        self.check_present()
        rows, cm = write_class_reports(result.targets.tolist(), result.predictions.tolist(), class_names, self.path)
        if items is not None and result.losses is not None:
            if len(items.names) == result.num_samples:
                write_per_image(self.path, result, items, class_names, title=title)
            else:  # another process met a broken file in the last pass that this one has not heard of
                warn(f"no {PREDICTIONS_CSV}: {len(items.names):,} val images known readable but "
                     f"{result.num_samples:,} evaluated")
                for stale in (PREDICTIONS_CSV, TOP_LOSSES_PNG):  # an earlier finish's, of other weights
                    (self.path / stale).unlink(missing_ok=True)
        metrics = {**metrics, "per_class": rows, "confused_pairs": confused_pairs(cm, class_names)}
        atomic_write_json(self.path / REPORT_FILE, metrics)
        write_report_page(self.path, "run")
        return metrics
