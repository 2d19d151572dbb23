"""The export formats, each built in memory and runnable there before anything is written.

- onnx: float32, the torch.export-based exporter, dynamic batch (and height/width with `dynamic_size`).
- onnx-int8: that graph quantized by onnxruntime (static, QDQ, int8 weights per output channel, uint8
  activations), calibrated on images of the run's own training data.
- onnx-fp16: that graph in float16 with float32 inputs and outputs, for GPU runtimes (TensorRT, ORT's CUDA).
- pt2: a torch.export program (`torch.export.load` runs it, no Python class needed).
- openvino: OpenVINO's IR (.xml and .bin) converted from the ONNX graph; an optional extra.
- triton: a Triton Inference Server model repository around the ONNX graph (config.pbtxt, labels.txt).

Class names and preprocessing travel inside each file (key "resnets"), so a deployment needs nothing else.
"""
from __future__ import annotations

import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ExportError, ResnetsError
from ..messages import first_line
from ..inference.exported import (INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ExportedModel, onnx_runner, openvino_module,
                      openvino_runner, pt2_runner)

# format: the name its file ends with (triton writes a folder)
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".onnx", "onnx-fp16": ".onnx", "pt2": ".pt2", "openvino": ".xml",
            "triton": ""}
FORMATS = tuple(SUFFIXES)
DEFAULT_NAMES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx",
                 "pt2": "model.pt2", "openvino": "model.xml", "triton": "triton"}
EXACT = ("onnx", "pt2", "openvino", "triton")  # float32: they must compute the eager model's logits
EXPORT_BATCH = 2  # batch 1 would be specialised by torch.export (0/1 sizes are special-cased)
MAX_BATCH = 4096
MAX_SIDE = 8192
ONNX_MIN_OPSET = 18  # the torch.export-based exporter's lowest; below it, it tries a conversion that fails on Pad
CALIBRATION_BATCH = 16
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
HISTOGRAM_METHODS = ("percentile", "entropy")  # onnxruntime keeps every activation of every image for these


@dataclass
class Artefact:
    """An export in memory: its files by name relative to the output, and the model they run as."""
    format: str
    files: dict[str, bytes]
    model: ExportedModel
    input_shape: tuple[Any, ...]  # ("batch", C, H, W), or ("batch", C, "height", "width")
    notes: list[str] = field(default_factory=list)


@dataclass
class Graph:
    """The checked float32 ONNX graph and what the formats built from it need."""
    fp32: bytes
    meta: dict[str, Any]
    shape: tuple[Any, ...]
    dynamic_size: bool
    calibration: torch.Tensor | None = None  # (N, C, H, W) preprocessed training images, for int8
    calibration_method: str = "minmax"


def export_metadata(model: nn.Module, input_size: tuple[int, int, int], dynamic_size: bool) -> dict[str, Any]:
    """What a deployment needs beside the graph: classes and the preprocessing the graph expects."""
    pretrained_cfg = model.pretrained_cfg.for_eval().replace(input_size=input_size).to_dict()
    return {"architecture": model.arch_name, "num_classes": model.num_classes,
            "class_names": model.labels(), "pretrained_cfg": pretrained_cfg, "dynamic_size": dynamic_size,
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "output": "logits (softmax not applied)"}


def min_side(model: nn.Module) -> int:
    """The smallest input side a dynamic-size graph accepts: the last stage keeps one pixel."""
    info = getattr(model, "feature_info", None)
    return int(info[-1]["reduction"]) if info else 1


def dynamic_shapes(model: nn.Module, dynamic_size: bool) -> tuple[dict[int, Any], ...]:
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if dynamic_size:
        if not getattr(model, "feature_info", None):
            raise ConfigError("--dynamic-size needs a model of this package (a global pool before the head); "
                              "export this one at a fixed --img-size")
        low = min_side(model)
        dims |= {2: torch.export.Dim("height", min=low, max=MAX_SIDE),
                 3: torch.export.Dim("width", min=low, max=MAX_SIDE)}
    return (dims,)


# ONNX float32 ------------------------------------------------------------------------------------------------------
def onnx_proto(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], dynamic_size: bool,
               opset: int | None) -> Any:
    try:
        import onnx  # the dynamo exporter needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          f"pip install 'resnets[export]'") from None
    newest = onnx.defs.onnx_opset_version()  # past it the exporter's converter dumps a C++ assertion
    if opset is not None and not ONNX_MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset {opset}: the ONNX exporter of torch {torch.__version__.split('+')[0]} with "
                          f"onnx {onnx.__version__} writes opsets {ONNX_MIN_OPSET} to {newest}")
    # The dynamo (torch.export-based) exporter: the TorchScript one is deprecated since torch 2.9.
    # f=None keeps the model in memory: passing a path would write weights to a side file `<f>.data`.
    program = torch.onnx.export(model, (example,), None, dynamo=True,
                                dynamic_shapes=dynamic_shapes(model, dynamic_size), input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:  # the exporter falls back to another opset with only a log line
        raise ExportError(f"asked for opset {opset}, the exporter produced opset {got}")
    set_onnx_metadata(proto, meta)
    return proto


def set_onnx_metadata(proto: Any, meta: dict[str, Any]) -> None:
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


def onnx_artefact(name: str, data: bytes, meta: dict[str, Any], shape: tuple[Any, ...]) -> Artefact:
    run, _ = onnx_runner(data)
    return Artefact(name, {"": data}, ExportedModel(run, meta, "onnx"), shape)


def onnx_fp32(graph: Graph) -> Artefact:
    return onnx_artefact("onnx", graph.fp32, graph.meta, graph.shape)


# ONNX int8 and fp16 ------------------------------------------------------------------------------------------------
class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over batches of preprocessed images."""

    def __init__(self, batches: Iterator[torch.Tensor]) -> None:
        self.batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch.float().numpy()}


def quantize_int8(fp32: bytes, calibration: torch.Tensor, method: str = "minmax") -> bytes:
    """Static int8 quantization of an ONNX model in QDQ form: int8 weights per output channel, uint8 activations
    with ranges observed on `calibration` (N, C, H, W). Per channel because a conv with its BN folded in has
    filters of very different ranges: the largest filter's over the smallest's is 2.2 (median conv) to 5 in the
    demo's cifar_resnet20, 6.8 (median) to 1e5 in our digits ResNet-50; one scale per tensor would leave
    the small filters a few levels of 256. onnxruntime runs QDQ graphs with int8 kernels on the CPU."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="resnets-int8-") as tmp:
        source, prepared, output = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        # Folds constants and BN into the convs and infers shapes, so every conv gets its own scales.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        batches = iter(calibration.split(CALIBRATION_BATCH))
        quantize_static(str(prepared), str(output), _Calibration(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        return output.read_bytes()


def float16(fp32: bytes) -> bytes:
    """The graph in float16, inputs and outputs still float32 (clients send the same arrays)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True).SerializeToString()


def onnx_int8(graph: Graph) -> Artefact:
    quantized = quantize_int8(graph.fp32, graph.calibration, graph.calibration_method)
    artefact = onnx_artefact("onnx-int8", with_metadata(quantized, graph.meta), graph.meta, graph.shape)
    artefact.notes.append(f"calibrated on {len(graph.calibration):,} training images ({graph.calibration_method})")
    return artefact


def onnx_fp16(graph: Graph) -> Artefact:
    return onnx_artefact("onnx-fp16", with_metadata(float16(graph.fp32), graph.meta), graph.meta, graph.shape)


def with_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    """The quantizer and the converter may drop metadata_props: put ours back."""
    import onnx

    proto = onnx.load_from_string(data)
    set_onnx_metadata(proto, meta)
    return proto.SerializeToString()


# torch.export ------------------------------------------------------------------------------------------------------
def pt2_artefact(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], dynamic_size: bool,
                 shape: tuple[Any, ...]) -> Artefact:
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(model, dynamic_size))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={METADATA_KEY: json.dumps(meta)})
    data = buf.getvalue()
    run, _ = pt2_runner(data)  # the saved bytes, loaded back: what a deployment will run
    return Artefact("pt2", {"": data}, ExportedModel(run, meta, "pt2"), shape)


# OpenVINO ----------------------------------------------------------------------------------------------------------
def openvino_artefact(graph: Graph) -> Artefact:
    """OpenVINO's IR of the checked ONNX graph, weights kept in float32 (its default compresses them to fp16,
    which is a precision choice, not a format's)."""
    fp32, meta, shape = graph.fp32, graph.meta, graph.shape
    ov = openvino_module()
    with tempfile.TemporaryDirectory(prefix="resnets-openvino-") as tmp:
        source, xml = Path(tmp) / "model.onnx", Path(tmp) / "model.xml"
        source.write_bytes(fp32)
        ov_model = ov.convert_model(str(source))
        ov_model.set_rt_info(json.dumps(meta), [METADATA_KEY])
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        files = {"": xml.read_bytes(), ".bin": xml.with_suffix(".bin").read_bytes()}
        ov_model = ov.Core().read_model(str(xml))  # the files written, read back
    return Artefact("openvino", files, ExportedModel(openvino_runner(ov_model), meta, "openvino"), shape)


# Triton ------------------------------------------------------------------------------------------------------------
def triton_name(arch: str) -> str:
    """Triton model names are folder names: keep [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", arch).strip("_") or "model"


def triton_config(name: str, meta: dict[str, Any], dynamic_size: bool, max_batch: int) -> str:
    """config.pbtxt of Triton's ONNX Runtime backend: the batch dimension is Triton's (`max_batch_size`), so
    `dims` leave it out; requests are batched by Triton's dynamic batcher."""
    chans, height, width = meta["pretrained_cfg"]["input_size"]
    dims = [chans, -1, -1] if dynamic_size else [chans, height, width]
    return "\n".join([
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }} ]',
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {meta["num_classes"]} ] '
        f'label_filename: "labels.txt" }} ]',
        "dynamic_batching { max_queue_delay_microseconds: 5000 }",
        # the preprocessing a client must apply, for people reading the repository
        f'parameters {{ key: "resnets" value: {{ string_value: {json.dumps(json.dumps(meta["pretrained_cfg"]))} }} }}',
        ""])


def triton_artefact(graph: Graph, max_batch: int = 32) -> Artefact:
    fp32, meta, dynamic_size, shape = graph.fp32, graph.meta, graph.dynamic_size, graph.shape
    name = triton_name(meta["architecture"])
    run, _ = onnx_runner(fp32)
    labels = "".join(n.replace("\n", " ").replace("\r", " ") + "\n" for n in meta["class_names"])
    files = {f"{name}/1/model.onnx": fp32, f"{name}/labels.txt": labels.encode("utf-8"),
             f"{name}/config.pbtxt": triton_config(name, meta, dynamic_size, max_batch).encode("utf-8")}
    return Artefact("triton", files, ExportedModel(run, meta, "onnx"), shape,
                    notes=[f"Triton model repository: tritonserver --model-repository <this folder>; model {name!r}"])


# All of them -------------------------------------------------------------------------------------------------------
FROM_ONNX: dict[str, Callable[[Graph], Artefact]] = {"onnx": onnx_fp32, "onnx-int8": onnx_int8, "onnx-fp16": onnx_fp16,
                                                     "openvino": openvino_artefact, "triton": triton_artefact}


def build_artefact(model: nn.Module, format: str, input_size: tuple[int, int, int], *, dynamic_size: bool = False,
                   opset: int | None = None, calibration: torch.Tensor | None = None,
                   calibration_method: str = "minmax", device: torch.device = torch.device("cpu")) -> Artefact:
    """`model` (in eval mode, on `device`) as `format`, in memory; `calibration`: the int8 export's images."""
    if format not in SUFFIXES:
        raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if opset is not None and format == "pt2":
        raise ConfigError("--opset applies to the ONNX formats only")
    if format == "onnx-int8" and calibration is None:
        raise ConfigError("--format onnx-int8 needs calibration images: a run folder (its training data), or "
                          "--calibration-dir DIR")
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(f"--calibration-method {calibration_method!r} is not one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    meta = export_metadata(model, input_size, dynamic_size)
    shape = ("batch", input_size[0], *(("height", "width") if dynamic_size else input_size[1:]))
    example = torch.randn(EXPORT_BATCH, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        if format == "pt2":
            return pt2_artefact(model, example, meta, dynamic_size, shape)
        fp32 = onnx_proto(model, example, meta, dynamic_size, opset).SerializeToString()
        return FROM_ONNX[format](Graph(fp32, meta, shape, dynamic_size, calibration, calibration_method))
    except ResnetsError:
        raise
    except Exception as e:  # the exporters raise many types; to a user each means "this did not export"
        raise ExportError(f"{format} export failed: {type(e).__name__}: {first_line(e)}") from e
