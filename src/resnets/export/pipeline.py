"""`export_model`: build the export in memory, check it, measure what it costs on labelled images, and only then
write it, with its report (`<file>.json`) beside it. A failed export, or an int8 one that loses more top-1 than
the margin allows, leaves no file.

The images come from the run that trained the model: its config.yaml names the data, the split and the seed,
so the validation images are the run's own, and int8 calibration uses its training images (never the
validation ones it is then judged on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..analysis.memory import activation_elements, available_bytes, check_activation_memory
from ..data.bad_files import collate_skipping
from ..data.datasets import load_eval_set, load_splits
from ..data.transforms import eval_transform
from ..device import resolve_device
from ..errors import ConfigError, DataError, ExportError
from ..fileio import atomic_write_bytes, atomic_write_json, check_writable, read_yaml_mapping
from ..hub import load_model
from ..inference.exported import (ExportedModel, exported_format, load_classifier, load_exported,
                                  openvino_module)
from ..inference.fold import for_inference
from ..inference.outputs import beside_weights, check_output
from .check import DEFAULT_MARGIN, RTOL, SPEED_SECONDS, ExportReport, check_exact, compare
from .formats import DEFAULT_NAMES, EXACT, FORMATS, HISTOGRAM_METHODS, SUFFIXES, Artefact, build_artefact, min_side

# At the 23-50 img/s of a ResNet-50 at 224 px on 2 cores (BENCHMARKS.md, "Exports"), eager and export together take
# about 2 minutes over these.
DEFAULT_CHECK_IMAGES = 2000
# Measured on the demo run: the largest logit difference to fp32 was 0.75 calibrated on 32 images, 0.16 on 256,
# 0.14 on 1,024 (top-1 99.16% for all three).
DEFAULT_CALIBRATION_IMAGES = 256
COMPARE_BATCH = 32


class AccuracyDropError(ExportError):
    """An export that loses more top-1 than the margin allows (exit code 3 at the CLI); `report` has the figures."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportResult:
    paths: list[Path]  # the file to load (a Triton repository: its folder), its other files, then the report
    format: str
    input_shape: tuple[Any, ...]
    report: ExportReport
    metadata: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.paths[0]


def report_path(output: str | Path, format: str) -> Path:
    """`model.onnx` -> `model.onnx.json`; a Triton repository keeps it inside, `export.json`."""
    output = Path(output)
    return output / "export.json" if format == "triton" else output.with_name(output.name + ".json")


def check_export_output(output: str | Path, format: str, weights: str | Path | None = None) -> None:
    """Refuse, before exporting, an `output` that is the weights file, cannot be written, or is not named as
    `format` writes (readers, people too, go by the extension: ONNX bytes in a .pt2 read as a broken .pt2)."""
    if format not in SUFFIXES:
        raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    suffix = SUFFIXES[format]
    if format == "triton":
        if Path(output).exists() and not Path(output).is_dir():
            raise ConfigError(f"--output {output}: --format triton writes a model repository, a folder")
        check_writable(output, "--output", folder=True)
        return
    check_output(output, weights)
    check_output(report_path(output, format), weights)
    if format == "openvino":
        check_output(Path(output).with_suffix(".bin"), weights)
    if Path(output).suffix.lower() != suffix:
        named = next((f for f, s in SUFFIXES.items() if s and Path(output).suffix.lower() == s), None)
        other = f", or pass --format {named}" if named else ""
        raise ConfigError(f"--output {output}: --format {format} writes a {suffix} file and readers go by the "
                          f"extension; name it {Path(output).with_suffix(suffix).name}{other}")


def run_config(weights: str | Path | None) -> dict[str, Any] | None:
    """The training options of the run `weights` belongs to (a run folder, or a file in one); None otherwise."""
    if weights is None or not Path(weights).exists():
        return None
    config = read_yaml_mapping(beside_weights(weights, "config.yaml"))
    return config if config and "dataset" in config else None


def _subset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """`n` items drawn without replacement (all of them if fewer): a fixed draw, so reports are comparable."""
    if len(dataset) <= n:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, sorted(order.tolist()))


def _batches(dataset: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels, _ in DataLoader(dataset, batch_size=COMPARE_BATCH, collate_fn=collate_skipping):
        if len(labels):
            yield images.float(), labels


class ExportData:
    """Where an export's labelled and calibration images come from: `data_dir` (as `resnets eval` reads it),
    else the run's config.yaml; `calibration_dir` (DIR/train, else DIR), else the run's training split."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int], weights: str | Path | None,
                 data_dir: str | Path | None = None, calibration_dir: str | Path | None = None) -> None:
        self.transform = eval_transform(model.pretrained_cfg.for_eval().replace(input_size=input_size))
        self.model, self.data_dir, self.calibration_dir = model, data_dir, calibration_dir
        self.run = run_config(weights)
        self._splits = None

    def splits(self) -> Any:
        if self._splits is None:
            r = self.run
            try:
                self._splits = load_splits(r["dataset"], r.get("data_dir"), val_fraction=r.get("val_fraction", 0.2),
                                           seed=r.get("seed", 0), max_image_mb=r.get("max_image_mb"),
                                           train_transform=self.transform, eval_transform=self.transform)
            except DataError as e:  # moved, or a relative path from another folder
                raise ConfigError(f"the run's data, which the export is checked on, cannot be read ({e}): give "
                                  f"--data-dir DIR (and --calibration-dir DIR for int8), or --check-images 0 to "
                                  f"measure speed alone") from None
        return self._splits

    def validation(self, limit: int) -> tuple[Dataset | None, str]:
        """At most `limit` labelled images (0: none), and where they come from."""
        if limit == 0:
            return None, ""
        if self.data_dir is not None:
            dataset, _, _ = load_eval_set(self.data_dir, self.transform, self.model.class_names)
            return _subset(dataset, limit, 0), str(self.data_dir)
        if self.run is None:
            return None, ""
        r = self.run
        where = " ".join(str(v) for v in (r["dataset"], r.get("data_dir")) if v)
        return _subset(self.splits().val, limit, 0), f"the run's val split ({where})"

    def calibration(self, n: int) -> torch.Tensor:
        """`n` preprocessed training images (a fixed draw): never the validation ones the export is judged on."""
        if self.calibration_dir is not None:
            root = Path(self.calibration_dir)
            if (root / "train").is_dir():
                root = root / "train"
            elif (root / "val").is_dir() or (root / "test").is_dir():
                raise ConfigError(f"--calibration-dir {root} has val/ or test/ but no train/: calibrate on "
                                  f"training images (DIR/train, or a folder of class folders)")
            dataset, _, _ = load_eval_set(root, self.transform, None)
        elif self.run is not None:
            dataset = self.splits().train
        else:
            raise ConfigError("--format onnx-int8 calibrates on training images: export from a run folder, or "
                              "give --calibration-dir DIR")
        images = [batch for batch, _ in _batches(_subset(dataset, n, 1))]
        if not images:
            raise ConfigError("no readable calibration images")
        return torch.cat(images)


def export_model(model: nn.Module, output: str | Path, format: str = "onnx", *, img_size: int | None = None,
                 dynamic_size: bool = False, opset: int | None = None, weights: str | Path | None = None,
                 device: str | None = "cpu", data_dir: str | Path | None = None,
                 calibration_dir: str | Path | None = None, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                 calibration_method: str = "minmax", check_images: int = DEFAULT_CHECK_IMAGES,
                 margin: float = DEFAULT_MARGIN, allow_accuracy_drop: bool = False,
                 speed_seconds: float = SPEED_SECONDS, rtol: float = RTOL) -> ExportResult:
    """Export `model` to `output` as `format` (`formats.FORMATS`), check and measure it, then write it.

    Args:
        img_size: square input size of the graph (default: the model's preprocessing size).
        dynamic_size: height and width dynamic too (ResNets take any size down to their last stage's stride).
        weights: the file or run `model` was loaded from: no output may replace it, and its run's config.yaml
            names the validation and calibration data.
        data_dir: labelled images to compare on instead of the run's val split (DIR/val, else DIR/test, else DIR).
        calibration_dir, calibration_images, calibration_method: the int8 export's calibration.
        check_images: at most this many labelled images are compared (a fixed random draw).
        margin: top-1 points the export may lose; more raises AccuracyDropError unless `allow_accuracy_drop`.
        speed_seconds: length of each img/s measurement.
        rtol: the float32 formats' largest |exported - eager| logit, as a share of the largest eager one.
    """
    check_export_output(output, format, weights)
    for name, value, low, high in (("--check-images", check_images, 0, math.inf),
                                   ("--calibration-images", calibration_images, 1, math.inf),
                                   ("--margin", margin, 0, 100), ("--time-s", speed_seconds, 0, 600)):
        if not low <= value <= high:
            raise ConfigError(f"{name} must be in {low}..{high}, got {value}")
    dev = resolve_device(device)
    input_size = export_input_size(model, img_size, dev)
    if format == "onnx-int8" and calibration_method in HISTOGRAM_METHODS:
        check_histogram_memory(model, input_size, calibration_images, calibration_method)
    model = model.to(dev).eval()
    data = ExportData(model, input_size, weights, data_dir, calibration_dir)
    validation, source = data.validation(check_images)  # its mistakes before the minutes of exporting
    check_sources(format, data, validation is not None, allow_accuracy_drop)
    calibration = data.calibration(calibration_images) if format == "onnx-int8" else None
    artefact = build_artefact(model, format, input_size, dynamic_size=dynamic_size, opset=opset,
                              calibration=calibration, calibration_method=calibration_method, device=dev)
    exact = check_exact(model, artefact, input_size, rtol) if format in EXACT else None
    eager = for_inference(model.cpu(), torch.device("cpu"))
    report = compare(eager, artefact, _batches(validation) if validation is not None else iter(()), input_size,
                     source, margin, speed_seconds)
    report.exact_check = exact
    if not report.within_margin and not allow_accuracy_drop:
        raise AccuracyDropError(f"the {format} export's top-1 is {report.top1['export']:.2f}%, "
                                f"{report.top1_drop:.2f} points below the model's {report.top1['pytorch']:.2f}% "
                                f"(margin {margin:g}); nothing written. --allow-accuracy-drop writes it anyway"
                                + (", or try --calibration-method percentile" if format == "onnx-int8" else ""),
                                report)
    paths = write_artefact(artefact, output)
    report_file = atomic_write_json(report_path(output, format), report.to_json() | {
        "file": str(paths[0]), "input_shape": list(artefact.input_shape)})
    return ExportResult([*paths, report_file], format, artefact.input_shape, report, artefact.model.metadata)


def export_input_size(model: nn.Module, img_size: int | None, device: torch.device) -> tuple[int, int, int]:
    """(C, H, W) of the graph: the weights' own test size, or `img_size`; refused when it cannot fit in memory."""
    chans, height, width = model.pretrained_cfg.for_eval().input_size  # a published set's test size
    if img_size is not None:
        if img_size < max(1, min_side(model)):
            raise ConfigError(f"--img-size must be at least {max(1, min_side(model))}, got {img_size}")
        height = width = img_size
    check_activation_memory(model, (int(height), int(width)), COMPARE_BATCH, device, batch_flag=None,
                            what=f"--img-size {img_size}" if img_size is not None else "the weights' input_size")
    return int(chans), int(height), int(width)


def check_sources(format: str, data: ExportData, labelled: bool, allow_accuracy_drop: bool) -> None:
    """What a format needs beyond the model, found missing before the minutes of exporting."""
    if format == "onnx-int8" and not labelled and not allow_accuracy_drop:
        raise ConfigError("an int8 export is checked on labelled images before it is written: export from a "
                          "run folder, or give --data-dir DIR; --allow-accuracy-drop writes it unchecked")
    if format == "openvino":
        openvino_module()


def check_histogram_memory(model: nn.Module, input_size: tuple[int, int, int], images: int, method: str) -> None:
    """ConfigError, before the export, when onnxruntime's histogram calibration cannot hold what it keeps: every
    activation of every calibration image (minmax keeps two numbers a tensor)."""
    per_image = activation_elements(model, input_size[1:], training=True)
    available = available_bytes(torch.device("cpu"))
    if per_image is None or available is None or per_image * 4 * images <= available // 2:
        return
    fits = max(1, available // 2 // (per_image * 4))
    raise ConfigError(f"--calibration-method {method} keeps every activation of every calibration image: "
                      f"{images:,} at {input_size[1]}x{input_size[2]} need about "
                      f"{per_image * 4 * images / 2**30:,.1f} GiB, {available / 2**30:,.1f} GiB is available; use "
                      f"--calibration-images {fits} or --calibration-method minmax")


def write_artefact(artefact: Artefact, output: str | Path) -> list[Path]:
    """Each file atomically; the file to load is written last, so a reader that finds it finds the rest
    (an OpenVINO .xml its .bin, a Triton repository its config)."""
    output = Path(output)
    if artefact.format == "triton":
        names = sorted(artefact.files, key=lambda n: n.endswith("config.pbtxt"))
        return [output, *(atomic_write_bytes(output / name, artefact.files[name]) for name in names)]
    extras = [atomic_write_bytes(output.with_suffix(name), data) for name, data in artefact.files.items() if name]
    return [atomic_write_bytes(output, artefact.files[""]), *extras]


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The "resnets" metadata of an exported .onnx, .pt2 or OpenVINO .xml file (checked as loading checks it)."""
    return load_exported(path).metadata


def default_output(weights: str | Path | None, format: str) -> Path:
    """Beside the weights (in their run folder), else in this folder: model.onnx, model.int8.onnx, ..."""
    exists = weights is not None and Path(weights).exists()
    return beside_weights(weights, DEFAULT_NAMES[format]) if exists else Path(DEFAULT_NAMES[format])


BACKENDS = ("torch", "onnx", "openvino")


def exported_in_memory(model: nn.Module, backend: str) -> ExportedModel:
    """`model` exported for `backend` ("onnx" or "openvino") at its own size, checked as `resnets export` checks
    the float32 formats, never written: what `resnets serve --backend onnx` runs from weights."""
    model = model.eval()
    input_size = export_input_size(model, None, torch.device("cpu"))
    artefact = build_artefact(model, backend, input_size)
    check_exact(model, artefact, input_size)
    return artefact.model


def load_on_backend(source: str | Path | None, model_name: str | None = None, backend: str | None = None,
                    ) -> nn.Module:
    """`load_classifier`, run on `backend`: "torch", "onnx" or "openvino" (None: the source's own; weights run on
    torch). Weights asked to run elsewhere are exported in memory first."""
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    kind = exported_format(source if source is not None else model_name)
    if kind is not None:
        own = "torch" if kind == "pt2" else kind
        if backend not in (None, own):
            raise ConfigError(f"{source or model_name} runs on {own}; --backend {backend} cannot run it "
                              f"(leave --backend out, or serve the weights)")
        return load_classifier(source, model_name)
    model = load_model(source, model_name)
    return model if backend in (None, "torch") else exported_in_memory(model, backend)
