"""`resnets eval`: accuracy, per-class report and confusion matrix of a model on an image folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..data.bad_files import BAD_FILES_CSV, BadFiles, SkipUnreadable, collate_skipping
from ..data.datasets import ImageFiles, load_eval_set
from ..data.transforms import eval_transform
from ..device import check_workers, default_workers, resolve_device
from ..errors import ConfigError, DataError
from ..evaluation import evaluate
from ..fileio import atomic_write_json, check_writable
from .exported import load_classifier
from ..analysis.memory import check_activation_memory
from ..models.resnet import check_img_size
from ..models.weights import resolve_weights
from ..per_image import (DEFAULT_TOP_LOSSES, PREDICTIONS_CSV, TOP_LOSSES_PNG, check_top_losses, confused_pairs,
                         evaluated_items, write_per_image)
from ..report_page import PAGE, write_report_page
from ..reports import CONFUSION_CSV, CONFUSION_PNG, REPORT_CSV, write_class_reports
from .cam import grad_cam
from .fold import for_inference, has_parameters
from .outputs import beside_weights, files_read, refuse_overwrite
from .tta import TTAConfig, TTAViews, check_tta

EVAL_DIR = "eval"
FILES = {"summary": "eval.json", "report": REPORT_CSV, "confusion_csv": CONFUSION_CSV, "confusion_png": CONFUSION_PNG,
         "predictions": PREDICTIONS_CSV, "page": PAGE}


@dataclass
class EvalSummary:
    top1: float  # percent
    top5: float  # percent; with fewer than 5 classes, top-k over all of them (100)
    loss: float
    num_samples: int
    weights: str  # the file evaluated ("" for a model given as an object)
    data_dir: str
    class_names: list[str]
    per_class: list[dict[str, Any]] = field(repr=False)
    confusion: list[list[int]] = field(repr=False)  # rows: true class; in confusion_matrix.csv, not eval.json
    output_dir: str = ""
    files: dict[str, str] = field(default_factory=dict)
    unreadable_files: int = 0  # skipped, listed in bad_files.csv; not in num_samples
    confused_pairs: list[dict[str, Any]] = field(default_factory=list)  # the largest off-diagonal cells
    tta: dict[str, dict[str, Any]] = field(default_factory=dict)  # TTAViews.figures; {} without TTA

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("top1", "top5", "loss", "num_samples", "unreadable_files",
                                               "weights", "data_dir", "class_names", "per_class", "confused_pairs",
                                               "files")
                } | ({"tta": self.tta} if self.tta else {})


def evaluate_weights(weights: str | Path | None, data_dir: str | Path, *, model_name: str | None = None,
                     output_dir: str | Path | None = None, **options: Any) -> EvalSummary:
    """`evaluate_model` of `load_classifier(weights, model_name)`: a run folder, a model folder, a weights file, an
    exported file, a URL,
    or (`weights` None) the published weights `model_name` names.

    `output_dir` defaults to `eval/` in the run folder or beside the weights file, else in this folder.
    """
    local = Path(weights) if weights is not None and Path(weights).exists() else None
    out = Path(output_dir) if output_dir is not None else beside_weights(local, EVAL_DIR) if local else Path(EVAL_DIR)
    model = load_classifier(weights, model_name)
    return evaluate_model(model, data_dir, out, weights=resolve_weights(local) if local else None, **options)


def evaluate_model(model: nn.Module, data_dir: str | Path, output_dir: str | Path, *, batch_size: int = 64,
                   workers: int | None = None, device: str | None = None, img_size: int | None = None,
                   max_bad_fraction: float = 0.01, max_image_mb: float | None = None,
                   weights: str | Path | None = None, tta: TTAConfig | None = None,
                   top_losses: int = DEFAULT_TOP_LOSSES, top_losses_cam: bool = False) -> EvalSummary:
    """Evaluate `model` on an ImageFolder (DIR/val, else DIR/test, else DIR) and write the reports.

    Args:
        output_dir: where eval.json, per_class.csv and confusion_matrix.{csv,png} go.
        workers: loader processes (default: `default_workers` of the device).
        img_size: evaluate at another resolution than the model's preprocessing says.
        max_bad_fraction: unreadable images are skipped and listed in bad_files.csv in `output_dir`;
            more than this share of them is a DataError.
        max_image_mb: larger image files (default: `MAX_IMAGE_MB`) and special files (a FIFO, a device) are
            unreadable: skipped and listed, never read.
        weights: the file `model` was loaded from, which no output may replace.
        top_losses, top_losses_cam: top_losses.png shows that many worst mistakes (0: none), with Grad-CAM.
        tta: also measure test-time augmentation (`inference/tta.py`) in the same pass: the flips, and with
            `tta.size` the flips with the size too, in `EvalSummary.tta`. The per-class report and confusion
            matrix stay the plain model's: they describe the weights, and TTA is a figure beside them.

    Raises DataError when the folder's classes are not the model's, and ConfigError when an output would
    replace the weights or an image of the folder, before anything is written.
    """
    check_workers(workers)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    check_img_size(model, img_size)  # as training does: the last stage keeps at least one pixel
    check_activation_memory(model, img_size or tuple(model.pretrained_cfg.for_eval().input_size[1:]), batch_size, dev,
                            what=None if img_size else "the weights' input_size")
    check_tta(model, tta, model.pretrained_cfg.for_eval().with_img_size(img_size).input_size, batch_size, dev)
    dataset, class_names = checked_eval_set(model, data_dir, out := Path(output_dir), img_size, max_image_mb,
                                            weights, top_losses, top_losses_cam)
    bad_files = BadFiles(len(dataset), max_bad_fraction, out / BAD_FILES_CSV)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=default_workers(dev.type) if workers is None
                        else workers, shuffle=False, pin_memory=dev.type == "cuda", collate_fn=collate_skipping)
    net = for_inference(model.to(dev), dev)
    views = TTAViews(net, tta, model.pretrained_cfg.interpolation) if tta is not None else None  # plain logits out
    result = evaluate(net if views is None else views, SkipUnreadable(loader, bad_files), dev, keep_losses=True)
    bad_files.report()
    if not len(bad_files):
        (out / BAD_FILES_CSV).unlink(missing_ok=True)  # an earlier eval's list, no longer true
    source = f"{Path(weights).parent.name}/{Path(weights).name}" if weights else model.arch_name or "model"
    per_class, cm = write_class_reports(result.targets, result.predictions, class_names, out,
                                        title=f"{source} on {Path(data_dir).name}: top-1 {result.top1:.2f}%")
    cam = (lambda images: grad_cam(model, images.to(dev)).heatmaps) if top_losses_cam else None
    files = {key: str(out / name) for key, name in FILES.items()}
    files.update(write_per_image(out, result, evaluated_items(dataset, model.pretrained_cfg, bad_files.reasons),
                                 class_names, top_losses, cam, title=source))
    if len(bad_files):
        files["bad_files"] = str(bad_files.csv_path)
    summary = EvalSummary(top1=result.top1, top5=result.top5, loss=result.loss, num_samples=result.num_samples,
                          weights=str(weights or ""), data_dir=str(data_dir), class_names=list(class_names),
                          per_class=per_class, confusion=cm.tolist(), output_dir=str(out), files=files,
                          unreadable_files=len(bad_files), confused_pairs=confused_pairs(cm, class_names),
                          tta={} if views is None else views.figures(result.targets))
    atomic_write_json(files["summary"], summary.to_json())  # its presence means the data files are there
    write_report_page(out, "eval")  # built from them
    return summary


def checked_eval_set(model: nn.Module, data_dir: str | Path, out: Path, img_size: int | None,
                     max_image_mb: float | None, weights: str | Path | None,
                     top_losses: int, top_losses_cam: bool = False) -> tuple[ImageFiles, list[str]]:
    """The folder's images and classes, checked before any work: the classes are the model's, the outputs
    (`top_losses` of them in a grid) replace no file the eval reads, Grad-CAM has weights to work on."""
    check_top_losses(top_losses)
    if top_losses_cam and not has_parameters(model):
        raise ConfigError("--top-losses-cam needs the model's weights (Grad-CAM), not an exported graph")
    dataset, _, class_names = load_eval_set(data_dir, eval_transform(model.pretrained_cfg.for_eval(), img_size),
                                            model.class_names, max_image_mb)
    if len(class_names) != model.num_classes:  # only reachable when the model names no classes
        raise DataError(f"{data_dir} has {len(class_names)} classes but the model predicts {model.num_classes}")
    outputs = [out / name for name in (*FILES.values(), BAD_FILES_CSV, TOP_LOSSES_PNG)]  # the last two: or deleted
    check_writable(outputs[0], "--output")
    refuse_overwrite(outputs, files_read(weights, [path for path, _ in dataset.samples]), "eval output",
                     "choose another --output folder")
    return dataset, class_names
