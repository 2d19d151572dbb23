"""`resnets eval`: accuracy, per-class report and confusion matrix of a checkpoint on an image folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..analysis.flops import check_img_size
from ..data import DataError, eval_transform
from ..errors import ConfigError
from ..fileio import atomic_write_json, check_writable
from ..models.inference import for_inference
from ..models.weights import load_model, resolve_checkpoint
from ..reports import CONFUSION_CSV, CONFUSION_PNG, REPORT_CSV, write_class_reports
from .common import beside_checkpoint, files_read, refuse_overwrite, resolve_device

EVAL_DIR = "eval"
FILES = {"summary": "eval.json", "report": REPORT_CSV, "confusion_csv": CONFUSION_CSV, "confusion_png": CONFUSION_PNG}


@dataclass
class EvalSummary:
    top1: float  # percent
    top5: float  # percent; with fewer than 5 classes, top-k over all of them (100)
    loss: float
    num_samples: int
    checkpoint: str
    data_dir: str
    class_names: list[str]
    per_class: list[dict[str, Any]] = field(repr=False)
    confusion: list[list[int]] = field(repr=False)  # rows: true class; in confusion_matrix.csv, not eval.json
    output_dir: str = ""
    files: dict[str, str] = field(default_factory=dict)
    unreadable_files: int = 0  # skipped, listed in bad_files.csv; not in num_samples

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("top1", "top5", "loss", "num_samples", "unreadable_files",
                                               "checkpoint", "data_dir", "class_names", "per_class", "files")}


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, *, model_name: str | None = None,
                        batch_size: int = 64, workers: int = 2, device: str | None = None,
                        img_size: int | None = None, output_dir: str | Path | None = None,
                        max_bad_fraction: float = 0.01) -> EvalSummary:
    """Evaluate a checkpoint on an ImageFolder (DIR/val, else DIR/test, else DIR) and write the reports.

    Args:
        checkpoint: a run directory, `save_pretrained` folder or weights file.
        model_name: architecture of a bare state dict (files written by resnets carry their own).
        img_size: evaluate at another resolution than the checkpoint's preprocessing says.
        output_dir: where eval.json, per_class.csv and confusion_matrix.{csv,png} go
            (default: `eval/` in the run directory, or beside the weights file).
        max_bad_fraction: unreadable images are skipped and listed in bad_files.csv in `output_dir`;
            more than this share of them is a DataError.

    Raises DataError when the folder's classes are not the checkpoint's, and ConfigError when an output would
    replace the checkpoint or an image of the folder, before anything is written.
    """
    from ..data.bad_files import BAD_FILES_CSV, BadFiles, SkipUnreadable, collate_skipping
    from ..data.datasets import load_eval_set
    from ..training.loop import evaluate

    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch size must be >= 1 and workers >= 0 (got {batch_size} and {workers})")
    dev = resolve_device(device)
    weights = resolve_checkpoint(checkpoint)
    model = load_model(checkpoint, model_name)
    names = getattr(model, "class_names", None)
    check_img_size(model, img_size)  # as training does: the last stage keeps at least one pixel
    dataset, _, class_names = load_eval_set(data_dir, eval_transform(model.pretrained_cfg, img_size), names)
    if len(class_names) != model.num_classes:  # only reachable when the checkpoint names no classes
        raise DataError(f"{data_dir} has {len(class_names)} classes but the model predicts {model.num_classes}")
    out = Path(output_dir) if output_dir is not None else beside_checkpoint(checkpoint, EVAL_DIR)
    outputs = [out / name for name in (*FILES.values(), BAD_FILES_CSV)]  # bad_files.csv: written or deleted
    check_writable(outputs[0], "--output")
    refuse_overwrite(outputs, files_read(checkpoint, [path for path, _ in dataset.samples]), "eval output",
                     "choose another --output folder")
    bad_files = BadFiles(len(dataset), max_bad_fraction, out / BAD_FILES_CSV)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=dev.type == "cuda", collate_fn=collate_skipping)
    result = evaluate(for_inference(model.to(dev), dev), SkipUnreadable(loader, bad_files), dev)
    bad_files.report()
    if not len(bad_files):
        (out / BAD_FILES_CSV).unlink(missing_ok=True)  # an earlier eval's list, no longer true
    per_class, cm = write_class_reports(
        result.targets, result.predictions, class_names, out,
        title=f"{weights.parent.name}/{weights.name} on {Path(data_dir).name}: top-1 {result.top1:.2f}%")
    files = {key: str(out / name) for key, name in FILES.items()}
    if len(bad_files):
        files["bad_files"] = str(bad_files.csv_path)
    summary = EvalSummary(top1=result.top1, top5=result.top5, loss=result.loss, num_samples=result.num_samples,
                          checkpoint=str(weights), data_dir=str(data_dir), class_names=list(class_names),
                          per_class=per_class, confusion=cm.tolist(), output_dir=str(out), files=files,
                          unreadable_files=len(bad_files))
    atomic_write_json(files["summary"], summary.to_json())  # last: its presence means the rest is there
    return summary

