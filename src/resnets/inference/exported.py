"""Exported files (.onnx, .pt2, OpenVINO's .xml) as classifiers with the model's interface, and the one loader that
`predict`, `eval` and `serve` use for any source: a run, weights, or an exported file. Writing them is
`resnets.export`'s work, a layer above.

An exported file carries its class names and preprocessing (key "resnets": ONNX metadata_props, the .pt2 extra
file, OpenVINO rt_info), so it needs nothing beside it. That metadata is untrusted like any file's: it is parsed
with the limits of `models.metadata_schema` and checked against the graph's own output size.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..hub import load_model
from ..messages import first_line
from ..models.metadata_schema import MAX_CLASSES, parse_json
from ..models.pretrained_cfg import PretrainedCfg

METADATA_KEY = "resnets"  # same key as inside our safetensors files
INPUT_NAME, OUTPUT_NAME = "input", "logits"
RUNTIME_OF_SUFFIX = {".onnx": "onnx", ".pt2": "pt2", ".xml": "openvino"}  # how an exported file runs, by its name

MAX_PT2_ENTRY_BYTES = 256 * 2**20  # a .pt2's configs and sample inputs (read whole to be checked) are a few KB
Runner = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) float32 -> (B, num_classes) logits


class ExportedModel(nn.Module):
    """An exported graph behind the interface predict and serve use (`labels()`, `num_classes`,
    `pretrained_cfg`, `arch_name`). It has no parameters: BN folding, Grad-CAM and training do not apply."""

    def __init__(self, run: Runner, metadata: dict[str, Any], backend: str, source: str = "") -> None:
        super().__init__()
        self._run, self.backend, self.source = run, backend, source
        self.metadata = metadata
        self.arch_name = str(metadata.get("architecture") or "exported")
        self.num_classes = int(metadata["num_classes"])
        self.class_names = list(metadata["class_names"])
        self.pretrained_cfg = PretrainedCfg.from_dict(metadata["pretrained_cfg"])
        self.dynamic_size = metadata.get("dynamic_size", False) is True

    def labels(self) -> list[str]:
        return self.class_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.pretrained_cfg.input_size[1:])
        if not self.dynamic_size and tuple(x.shape[-2:]) != size:
            raise ConfigError(f"this export takes {size[0]}x{size[1]} images only, not {x.shape[-2]}x{x.shape[-1]}; "
                              f"export with --dynamic-size for other sizes")
        try:
            logits = self._run(x.detach().float().cpu().contiguous())
        except Exception as e:  # the runtime's own errors (onnxruntime's Fail, OpenVINO's, torch's)
            raise ConfigError(f"the exported model cannot run a batch of shape {tuple(x.shape)}: "
                              f"{type(e).__name__}: {first_line(e)}") from None
        return torch.as_tensor(logits).to(x.device)

    def probe(self, source: str | os.PathLike) -> "ExportedModel":
        """Refuse (CheckpointError) a graph that does not give `num_classes` logits for one image of its input
        size: the metadata's class names would then name other outputs than the graph's."""
        try:
            logits = self(torch.zeros(1, *self.pretrained_cfg.input_size))
        except ConfigError as e:
            raise CheckpointError(f"{source}: {e}") from None
        if tuple(logits.shape) != (1, self.num_classes):
            raise CheckpointError(f"{source}: the graph gives logits of shape {tuple(logits.shape)} for one image, "
                                  f"its metadata names {self.num_classes} classes")
        return self

    def extra_repr(self) -> str:
        return f"{self.backend}: {self.source or self.arch_name}, {self.num_classes} classes"


def checked_metadata(text: str | bytes, source: str | os.PathLike, outputs: int | None) -> dict[str, Any]:
    """The "resnets" metadata of an exported file, refused (CheckpointError naming the file) when it is not what
    `export_metadata` writes or does not fit the graph's `outputs` classes (None: a dynamic size)."""
    meta = parse_json(text, source, f'metadata "{METADATA_KEY}"')
    if not isinstance(meta, dict):
        raise CheckpointError(f'{source}: metadata "{METADATA_KEY}" is not a JSON object')
    n, names = meta.get("num_classes"), meta.get("class_names")
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CLASSES):
        raise CheckpointError(f"{source}: num_classes={n!r} is not a count of classes")
    if outputs is not None and outputs != n:
        raise CheckpointError(f"{source}: the graph gives {outputs} logits but its metadata names {n} classes")
    if not (isinstance(names, list) and len(names) == n and all(isinstance(s, str) for s in names)):
        raise CheckpointError(f"{source}: class_names is not a list of {n} names")
    if not isinstance(meta.get("dynamic_size", False), bool):
        raise CheckpointError(f"{source}: dynamic_size={meta['dynamic_size']!r} is not true or false")
    if not isinstance(meta.get("pretrained_cfg"), dict):
        raise CheckpointError(f"{source}: no preprocessing (pretrained_cfg) in its metadata")
    try:
        PretrainedCfg.from_dict(meta["pretrained_cfg"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: {first_line(e)}") from None
    return meta


def no_metadata(source: str | os.PathLike) -> CheckpointError:
    return CheckpointError(f"{source}: no resnets metadata (class names, preprocessing); export it with "
                           f"`resnets export`")


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


# ONNX -------------------------------------------------------------------------------------------------------------
def onnx_runner(model: str | bytes) -> tuple[Runner, Any]:
    """An onnxruntime session on the CPU (a file path or the bytes of a model), and the session itself. It takes
    as many threads as torch (`torch.set_num_threads`): `serve --workers N` gives each process its share."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running an ONNX model needs onnxruntime: pip install 'resnets[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])), session


def load_onnx(path: Path) -> ExportedModel:
    try:
        run, session = onnx_runner(str(path))
    except ConfigError:
        raise
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) mean "not a model it can run"
        raise CheckpointError(f"{path}: not an ONNX model onnxruntime can run ({first_line(e)})") from None
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise no_metadata(path)
    outputs = _static(session.get_outputs()[0].shape[-1])
    return ExportedModel(run, checked_metadata(props[METADATA_KEY], path, outputs), "onnx", str(path)).probe(path)


# torch.export ------------------------------------------------------------------------------------------------------
def pt2_runner(data: bytes | Path) -> tuple[Runner, dict[str, str]]:
    """The program's module, run on the device it was exported on, and its extra files."""
    extra = {METADATA_KEY: ""}
    program = torch.export.load(io.BytesIO(data) if isinstance(data, bytes) else data, extra_files=extra)
    module = program.module()
    device = next(iter([*module.parameters(), *module.buffers()]), torch.empty(0)).device

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.to(device)).cpu()
    return run, extra


def check_pt2_archive(path: Path) -> None:
    """Refuse a .pt2 whose loading would unpickle: `torch.export.load` reads a tensor marked `use_pickle`, a
    legacy weights file and, failing weights-only, any .pt entry with `torch.load(weights_only=False)`, which
    runs whatever code the file names. Ours hold raw tensor bytes only; every .pt entry must load weights-only."""
    if not zipfile.is_zipfile(path):  # torch.export.load would log a traceback before raising
        raise CheckpointError(f"{path}: not a torch.export program (not a zip archive)")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith((".json", ".pt")) and info.file_size > MAX_PT2_ENTRY_BYTES:
                raise CheckpointError(f"{path}: {info.filename} is {info.file_size:,} bytes, more than a "
                                      f"resnets export holds there")
            if info.filename.endswith("_config.json") and "/data/" in info.filename:
                config = parse_json(archive.read(info), path, info.filename)
                if '"use_pickle": true' in json.dumps(config):
                    raise CheckpointError(f"{path}: {info.filename} marks tensors as pickled; pickles can run code, "
                                          f"so this .pt2 is not loaded")
            elif info.filename.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(info)), weights_only=True)
                except Exception:  # UnpicklingError, or anything else weights-only refuses
                    raise CheckpointError(f"{path}: {info.filename} holds pickled objects beyond tensors; pickles "
                                          f"can run code, so this .pt2 is not loaded") from None


def load_pt2(path: Path) -> ExportedModel:
    check_pt2_archive(path)
    try:
        run, extra = pt2_runner(path)
    except Exception as e:  # a damaged zip, another format: torch raises many types
        raise CheckpointError(f"{path}: not a torch.export program ({type(e).__name__}: {first_line(e)})") from None
    if not extra.get(METADATA_KEY):
        raise no_metadata(path)
    return ExportedModel(run, checked_metadata(extra[METADATA_KEY], path, None), "pt2", str(path)).probe(path)


# OpenVINO ----------------------------------------------------------------------------------------------------------
def openvino_module() -> Any:
    try:
        import openvino
    except ImportError:
        raise ConfigError("OpenVINO needs its package, an optional extra: pip install 'resnets[openvino]'") from None
    return openvino


def openvino_runner(ov_model: Any) -> Runner:
    ov = openvino_module()
    # float32 as exported: on CPUs with bf16 or fp16 units OpenVINO's default hint runs in those (0.03 off
    # on our digits model's logits), a precision choice that belongs to the export, not to the runtime
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()  # one per model: predict and serve call it from one thread
    return lambda x: torch.from_numpy(np.array(request.infer({0: x.numpy()})[compiled.output(0)]))


def load_openvino(path: Path) -> ExportedModel:
    ov = openvino_module()
    try:
        ov_model = ov.Core().read_model(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not an OpenVINO IR ({first_line(e)}); its .bin must lie beside it") from None
    if not ov_model.has_rt_info([METADATA_KEY]):
        raise no_metadata(path)
    text = str(ov_model.get_rt_info([METADATA_KEY]).astype(str))
    shape = ov_model.output(0).get_partial_shape()
    outputs = shape[-1].get_length() if shape[-1].is_static else None
    return ExportedModel(openvino_runner(ov_model), checked_metadata(text, path, outputs), "openvino",
                         str(path)).probe(path)


LOADERS = {"onnx": load_onnx, "pt2": load_pt2, "openvino": load_openvino}


def exported_format(source: str | Path | None) -> str | None:
    """"onnx", "pt2" or "openvino" for a path named like an exported file, else None (weights, runs, names)."""
    return None if source is None else RUNTIME_OF_SUFFIX.get(Path(source).suffix.lower())


def load_exported(path: str | Path) -> ExportedModel:
    path = Path(path)
    kind = exported_format(path)
    if kind is None:
        raise ConfigError(f"{path}: not an exported model ({', '.join(RUNTIME_OF_SUFFIX)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return LOADERS[kind](path)


def load_classifier(source: str | Path | None, model_name: str | None = None) -> nn.Module:
    """A ready classifier from a run, a weights file or folder, a published name, or an exported file: it has
    `labels()`, `num_classes`, `pretrained_cfg`, `arch_name`, and maps a normalised (B, C, H, W) batch to logits.

    `model_name`: the architecture of a bare state dict, or published weights without `source`; an exported file
    may come here too (`resnets predict --model model.onnx`).
    """
    if source is None and exported_format(model_name):
        source, model_name = model_name, None
    if exported_format(source) is None:
        return load_model(source, model_name)
    if model_name:
        raise ConfigError(f"{source} carries its architecture; --model {model_name} does not apply")
    return load_exported(source)
