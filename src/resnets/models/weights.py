"""Reading and writing weights: safetensors first, `torch.load(weights_only=True)` only, never pickled code.

Checkpoints of torchvision, timm and the official Res2Net release share our parameter names; the
prlz77 CIFAR ResNeXt ones are renamed on load. A classifier of another size is skipped and reported.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from ..errors import CheckpointError
from ..fileio import (atomic_write_bytes, atomic_write_json, content_digest, written_as_safetensors,
                      written_by_torch_save)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
METADATA_KEY = "resnets"  # safetensors metadata entry holding the JSON of `model_metadata`
DIGEST_KEY = "sha256"  # safetensors metadata entry: content_digest of the tensors (catches bit flips)
RUN_WEIGHTS = ("best.safetensors", "last.safetensors")  # what a training run directory holds
CLASSIFIER_PREFIX = "fc."
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# prlz77/ResNeXt.pytorch CifarResNeXt -> our names.
_PRLZ77_RULES = [
    (r"^conv_1_3x3\.", "conv1."),
    (r"^bn_1\.", "bn1."),
    (r"^classifier\.", "fc."),
    (r"^stage_(\d+)\.stage_\d+_bottleneck_(\d+)\.", r"layer\1.\2."),
    (r"\.conv_reduce\.", ".conv1."), (r"\.bn_reduce\.", ".bn1."),
    (r"\.conv_conv\.", ".conv2."), (r"\.bn\.", ".bn2."),
    (r"\.conv_expand\.", ".conv3."), (r"\.bn_expand\.", ".bn3."),
    (r"\.shortcut\.shortcut_conv\.", ".downsample.0."), (r"\.shortcut\.shortcut_bn\.", ".downsample.1."),
]


@dataclass
class LoadReport:
    path: str
    skipped: list[str] = field(default_factory=list)  # classifier keys left at their fresh init
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        skipped = f"; skipped {', '.join(self.skipped)} (head size differs)" if self.skipped else ""
        return f"loaded {self.path}{skipped}"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weights file or folder, with wrappers and foreign names undone."""
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: folder has no {WEIGHTS_FILE}")
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    metadata: dict[str, Any] = {}
    if path.suffix.lower() == ".safetensors" or written_as_safetensors(path):
        try:
            with safe_open(str(path), "pt") as f:  # one open for tensors and header alike
                header = f.metadata() or {}
                state = {key: f.get_tensor(key) for key in f.keys()}
            metadata = _maybe_json(header.get(METADATA_KEY, "{}"))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_short(e)})") from None
        if not isinstance(metadata, dict):
            metadata = {}
        if DIGEST_KEY in header and content_digest(state) != header[DIGEST_KEY]:
            raise CheckpointError(f"{path}: content does not match its checksum (the file is damaged)")
    else:
        if not written_by_torch_save(path):
            raise CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a torch.save file)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path}: refused, it holds pickled objects beyond plain tensors and numbers "
                f"(resnets loads only with weights_only=True): {_short(e)}") from None
        except Exception as e:  # zip/EOF/unpickling errors of a damaged file all mean the same to a user
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_short(e)})") from None
        if isinstance(state, dict):
            for key in _WRAPPER_KEYS:
                if isinstance(state.get(key), dict):
                    metadata = {k: v for k, v in state.items() if k not in _WRAPPER_KEYS and not torch.is_tensor(v)}
                    state = state[key]
                    break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return remap_keys(state), metadata


def remap_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DataParallel/compile prefixes and rename known foreign layouts to ours."""
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    if "conv_1_3x3.weight" in out:
        renamed = {}
        for key, value in out.items():
            for pattern, repl in _PRLZ77_RULES:
                key = re.sub(pattern, repl, key)
            renamed[key] = value
        out = renamed
    return out


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load weights into `model`. Every backbone tensor must fit; a differently sized head is skipped.

    Raises CheckpointError naming the file and the keys that do not fit (e.g. another architecture).
    """
    state, metadata = read_state_dict(path)
    expected = model.state_dict()
    report = LoadReport(str(path), metadata=metadata)
    for key in [k for k in state if k.startswith(CLASSIFIER_PREFIX)]:
        if key not in expected or expected[key].shape != state[key].shape:
            report.skipped.append(key)
            del state[key]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")
               and not (k.startswith(CLASSIFIER_PREFIX) and report.skipped)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if strict and (missing or unexpected or mismatched):
        name = getattr(model, "arch_name", type(model).__name__)
        problems = [f"{len(v)} {what} ({_preview(v)})" for what, v in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if v]
        raise CheckpointError(f"{path}: does not fit {name}, probably another architecture: "
                              f"{'; '.join(problems)} keys")
    model.load_state_dict(state, strict=False)
    if "pretrained_cfg" in metadata and isinstance(metadata["pretrained_cfg"], dict):
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **metadata["pretrained_cfg"]}
    if isinstance(metadata.get("class_names"), list) and not report.skipped:
        model.class_names = metadata["class_names"]
    return report


def model_metadata(model: nn.Module, class_names: list[str] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild `model` and its preprocessing from its weights file alone."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise CheckpointError("this model was not made by resnets (it has no architecture config)")
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    if class_names is not None and len(class_names) != model.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    return {
        "architecture": getattr(model, "arch_name", None),
        "args": getattr(model, "arch_args", {}),
        "config": dataclasses.asdict(cfg),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": getattr(model, "pretrained_cfg", None) or cfg.data_config(),
        "class_names": list(class_names) if class_names is not None else None,
    }


def save_weights(model: nn.Module, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Atomically write the model's tensors as safetensors, with `model_metadata` inside the file."""
    meta = model_metadata(model, class_names)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a NaN checkpoint would silently poison every later use of the file
        raise CheckpointError(f"refusing to save {path}: non-finite values in {_preview(bad)}")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(meta), DIGEST_KEY: content_digest(tensors)}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def save_pretrained(model: nn.Module, directory: str | Path, class_names: list[str] | None = None) -> Path:
    """Write `config.json` + `model.safetensors` into `directory` (a layout a model hub serves as is)."""
    directory = Path(directory)
    save_weights(model, directory / WEIGHTS_FILE, class_names)
    atomic_write_json(directory / CONFIG_FILE, model_metadata(model, class_names))
    return directory


def build_from_metadata(meta: dict[str, Any], source: str | Path) -> nn.Module:
    """The (untrained) model described by `model_metadata`'s output."""
    from .resnet import ResNetConfig

    if "optimizer" in meta and "progress" in meta:  # what `resnets train` writes to resume from
        raise CheckpointError(f"{source}: a resume state (for `resnets train --resume`), not a model; use "
                              f"best.safetensors or last.safetensors of its run folder")
    try:
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(meta["config"]).items()}
        cfg = ResNetConfig().replace(**arch)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: architecture metadata is not a resnets config ({_short(e)})") from None
    model = cfg.build()
    model.arch_name, model.arch_args = meta.get("architecture"), meta.get("args") or {}
    model.pretrained_cfg = meta.get("pretrained_cfg") or cfg.data_config()
    model.class_names = meta.get("class_names")
    return model


def from_pretrained(directory: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_pretrained` (architecture, weights, preprocessing, class names)."""
    directory = Path(directory)
    model = build_from_metadata(_read_json(directory / CONFIG_FILE), directory / CONFIG_FILE)
    load_checkpoint(model, directory / WEIGHTS_FILE)
    return model


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A run directory means its best weights; a `save_pretrained` folder its model.safetensors."""
    path = Path(checkpoint)
    if path.is_dir():
        for name in (WEIGHTS_FILE, *RUN_WEIGHTS):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}, {RUN_WEIGHTS[0]} or {RUN_WEIGHTS[1]} in this folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    return path


def load_model(checkpoint: str | Path, model_name: str | None = None, **overrides: Any) -> nn.Module:
    """A ready model from a weights file, run directory or `save_pretrained` folder.

    Files written by resnets carry their architecture; a bare state dict (torchvision, timm, ...) needs
    `model_name`, and its head size is taken from the checkpoint.
    """
    from .registry import create_model

    path = resolve_checkpoint(checkpoint)
    state, meta = read_state_dict(path)
    if meta.get("config") is not None and not model_name:
        model = build_from_metadata(meta, path)
    elif model_name:
        head = state.get(CLASSIFIER_PREFIX + "weight")
        if head is not None and "num_classes" not in overrides:
            overrides["num_classes"] = head.shape[0]
        model = create_model(model_name, **overrides)
        if isinstance(meta.get("class_names"), list):
            model.class_names = meta["class_names"]
    else:
        raise CheckpointError(f"{path}: a bare weights file does not say its architecture; pass --model NAME")
    load_checkpoint(model, path)
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({_short(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _preview(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")
