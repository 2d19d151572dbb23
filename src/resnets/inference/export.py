"""`resnets export`: ONNX or torch.export (.pt2) with a dynamic batch dimension, checked before it is written.

The artefact is built in memory, run at another batch size than the one it was traced with (onnxruntime
for ONNX, `torch.export.load` for .pt2), compared with the eager model, and only then written atomically:
a failed export leaves no file. Class names and preprocessing travel inside the file (ONNX
metadata_props / .pt2 extra file, key "resnets"), so a deployment needs nothing else.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..analysis.memory import check_activation_memory
from ..device import resolve_device
from ..errors import ConfigError, ExportError, ResnetsError
from ..fileio import atomic_write_bytes
from ..messages import first_line
from .outputs import check_output

FORMATS = ("onnx", "pt2")
METADATA_KEY = "resnets"  # same key as inside our safetensors files
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPORT_BATCH, CHECK_BATCH = 2, 3  # batch 1 would be specialised by torch.export (0/1 sizes are special-cased)
MAX_BATCH = 4096
ONNX_MIN_OPSET = 18  # the torch.export-based exporter's lowest; below it, it tries a conversion that fails on Pad
RTOL = 1e-4  # of the largest eager logit: float32 kernels of ORT/inductor reorder sums


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, ...]  # (batch, C, H, W) with batch dynamic
    check_batch: int
    max_abs_diff: float
    tolerance: float
    metadata: dict[str, Any]


def export_metadata(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """What a deployment needs beside the graph: classes and the preprocessing the graph expects."""
    pretrained_cfg = model.pretrained_cfg.for_eval().replace(input_size=input_size).to_dict()
    return {"architecture": model.arch_name, "num_classes": model.num_classes,
            "class_names": model.labels(), "pretrained_cfg": pretrained_cfg,
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "output": "logits (softmax not applied)"}


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def _onnx_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], opset: int | None) -> bytes:
    try:
        import onnx  # the dynamo exporter needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing)") from None
    newest = onnx.defs.onnx_opset_version()  # past it the exporter's converter dumps a C++ assertion
    if opset is not None and not ONNX_MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset {opset}: the ONNX exporter of torch {torch.__version__.split('+')[0]} with "
                          f"onnx {onnx.__version__} writes opsets {ONNX_MIN_OPSET} to {newest}")
    # The dynamo (torch.export-based) exporter: the TorchScript one is deprecated since torch 2.9.
    # f=None keeps the model in memory: passing a path would write weights to a side file `<f>.data`.
    program = torch.onnx.export(model, (example,), None, dynamo=True, dynamic_shapes=({0: _batch_dim()},),
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                verbose=False)
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:  # the exporter falls back to another opset with only a log line
        raise ExportError(f"asked for opset {opset}, the exporter produced opset {got}")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    return proto.SerializeToString()


def _run_onnx(data: bytes, x: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking an ONNX export needs the onnxruntime package") from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]


def _pt2_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], opset: int | None) -> bytes:
    if opset is not None:
        raise ConfigError("--opset applies to ONNX only")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={METADATA_KEY: json.dumps(meta)})
    return buf.getvalue()


def _run_pt2(data: bytes, x: torch.Tensor) -> np.ndarray:
    program = torch.export.load(io.BytesIO(data))
    with torch.inference_mode():
        return program.module()(x).cpu().numpy()


EXPORTERS: dict[str, tuple[Callable[..., bytes], Callable[[bytes, torch.Tensor], np.ndarray]]] = {
    "onnx": (_onnx_bytes, _run_onnx),
    "pt2": (_pt2_bytes, _run_pt2),
}


def check_export_output(output: str | Path, format: str, weights: str | Path | None = None) -> None:
    """Refuse, before exporting, an `output` that is the weights file, cannot be written, or is not
    `*.<format>`.

    `read_export_metadata` (and people) pick the reader by the extension: ONNX bytes in a .pt2 file read as a
    broken .pt2. Requiring `.<format>` also means an export never replaces a .safetensors, .pt or .pth file.
    """
    check_output(output, weights)
    suffix = Path(output).suffix.lower()
    if suffix != f".{format}":
        named = next((f for f in FORMATS if suffix == f".{f}"), None)
        other = f", or pass --format {named}" if named else ""
        raise ConfigError(f"--output {output}: --format {format} writes a .{format} file and readers go by the "
                          f"extension; name it {Path(output).with_suffix('.' + format).name}{other}")


def export_model(model: nn.Module, output: str | Path, format: str = "onnx", *, img_size: int | None = None,
                 opset: int | None = None, rtol: float = RTOL, weights: str | Path | None = None,
                 device: str | None = "cpu") -> ExportResult:
    """Export `model` (in eval mode, traced on `device`) to `output`, verify it, then write it.

    Args:
        format: "onnx" or "pt2"; `output` must end in ".onnx" or ".pt2" to match.
        img_size: square input size of the graph (default: the model's preprocessing size).
        opset: ONNX opset (default: the exporter's).
        rtol: largest allowed |exported - eager| as a share of the largest |eager| logit.
        weights: the file `model` was loaded from, which `output` must not replace.
        device: where the model is traced and the check runs ("auto", "cpu", "cuda"; ONNX is checked with
            onnxruntime on the CPU).
    """
    if format not in EXPORTERS:
        raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    check_export_output(output, format, weights)
    dev = resolve_device(device)
    build, run = EXPORTERS[format]
    chans, height, width = model.pretrained_cfg.for_eval().input_size  # a published set's test size
    if img_size is not None:
        if img_size < 1:
            raise ConfigError(f"--img-size must be positive, got {img_size}")
        height = width = img_size
    input_size = (int(chans), int(height), int(width))
    check_activation_memory(model, input_size[1:], max(EXPORT_BATCH, CHECK_BATCH), dev, batch_flag=None,
                            what=f"--img-size {img_size}" if img_size is not None else "the weights' input_size")
    model = model.to(dev).eval()
    meta = export_metadata(model, input_size)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(EXPORT_BATCH, *input_size, generator=gen).to(dev)
    try:
        data = build(model, example, meta, opset)
    except ResnetsError:
        raise
    except Exception as e:  # the exporters raise many types; to a user each means "this did not export"
        raise ExportError(f"{format} export failed: {type(e).__name__}: {first_line(e)}") from e

    x = torch.randn(CHECK_BATCH, *input_size, generator=gen).to(dev)
    with torch.inference_mode():
        expected = model(x).cpu().numpy()
    try:
        actual = run(data, x)
    except Exception as e:
        raise ExportError(f"the exported {format} model does not run at batch {CHECK_BATCH}: "
                          f"{type(e).__name__}: {first_line(e)}") from e
    if actual.shape != expected.shape:
        raise ExportError(f"the exported model gives shape {actual.shape} at batch {CHECK_BATCH}, "
                          f"the eager model {expected.shape}")
    diff = float(np.abs(actual - expected).max())
    tolerance = rtol * max(float(np.abs(expected).max()), 1e-6)
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"the exported {format} model differs from the eager one by up to {diff:.3g} "
                          f"(tolerance {tolerance:.3g}); nothing written")
    path = atomic_write_bytes(output, data)
    return ExportResult(path, format, (EXPORT_BATCH, *input_size), CHECK_BATCH, diff, tolerance, meta)


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The "resnets" metadata of an exported .onnx or .pt2 file."""
    path = Path(path)
    if path.suffix.lower() == ".pt2":
        extra = {METADATA_KEY: ""}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[METADATA_KEY])
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])

