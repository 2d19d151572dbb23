"""Weights files: reading (safetensors, or `torch.load(weights_only=True)` only, never pickled code), fitting
them into a model, and writing them with the model's metadata inside.

Weights of torchvision, timm and the official Res2Net release share our parameter names; the prlz77 CIFAR
ResNeXt ones are renamed on load. A classifier of another size is skipped and reported. This module knows
files and models, not names: building a model by name is the registry's, above it.
"""
from __future__ import annotations

import argparse
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

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_bytes, content_digest, written_as_safetensors, written_by_torch_save
from ..messages import listed, one_line
from .features import FeatureExtractor
from .metadata_schema import check_nesting, checked_config, parse_json
from .pretrained_cfg import PretrainedCfg
from .resnet import ResNet

WEIGHTS_FILE = "model.safetensors"  # in a `save_pretrained` folder
RUN_WEIGHTS = ("best.safetensors", "last.safetensors")  # in a training run folder, in order of preference
TORCH_WEIGHTS_FILE = "pytorch_model.bin"  # what timm's save_for_hf writes without safetensors
METADATA_KEY = "resnets"  # safetensors metadata entry holding the JSON of `model_metadata`
DIGEST_KEY = "sha256"  # safetensors metadata entry: content_digest of the tensors (catches bit flips)
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
        skipped = f"; {', '.join(self.skipped)} left freshly initialised (the file's head differs)" if self.skipped \
            else ""
        return f"loaded {self.path}{skipped}"


def resolve_weights(weights: str | Path) -> Path:
    """The weights file a path names: a run folder means its best weights, a `save_pretrained` folder its
    model.safetensors, a file itself."""
    path = Path(weights)
    if path.is_dir():
        for name in (WEIGHTS_FILE, *RUN_WEIGHTS, TORCH_WEIGHTS_FILE):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}, {RUN_WEIGHTS[0]}, {RUN_WEIGHTS[1]} or "
                              f"{TORCH_WEIGHTS_FILE} in this folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file or folder")
    return path


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weights file (or a folder: `resolve_weights`), with wrappers and foreign
    names undone. A safetensors file with a checksum is verified against it."""
    path = resolve_weights(path)
    if path.suffix.lower() == ".safetensors" or written_as_safetensors(path):
        state, metadata = _read_safetensors(path)
    else:
        state, metadata = _read_torch_save(path)
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return remap_keys(state), metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), "pt") as f:  # one open for tensors and header alike
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    if DIGEST_KEY in header and content_digest(state) != header[DIGEST_KEY]:
        raise CheckpointError(f"{path}: content does not match its checksum (the file is damaged)")
    metadata = parse_json(header.get(METADATA_KEY, "{}"), path, f"metadata {METADATA_KEY!r}")
    return state, metadata if isinstance(metadata, dict) else {}


def _read_torch_save(path: Path) -> tuple[Any, dict[str, Any]]:
    if not written_by_torch_save(path):
        raise CheckpointError(f"{path}: not a weights file (neither safetensors nor a torch.save file)")
    try:
        # timm's and torchvision's training scripts store their argparse.Namespace beside the weights: a plain
        # record of names and values, which timm too allows (anything inside it is still checked)
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with how to load the file anyway; the line that names the object is the news
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), one_line(e))
        raise CheckpointError(
            f"{path}: refused, it holds pickled objects beyond plain tensors and numbers "
            f"(resnets loads only with weights_only=True): {detail}") from None
    except Exception as e:  # zip/EOF/unpickling errors of a damaged file all mean the same to a user
        raise CheckpointError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {one_line(e)})") from None
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                metadata = {k: v for k, v in state.items() if k not in _WRAPPER_KEYS and not torch.is_tensor(v)}
                return state[key], metadata
    return state, {}


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


def load_state(model: nn.Module, state: dict[str, torch.Tensor], metadata: dict[str, Any], source: str | Path,
               strict: bool = True) -> LoadReport:
    """Fit tensors read from `source` into `model`: every backbone tensor must fit; a differently sized head is
    skipped. The file's preprocessing replaces the model's, and its class names too when its head loaded.

    Raises CheckpointError naming the file and the keys that do not fit (e.g. another architecture).
    """
    state = dict(state)
    expected = model.state_dict()
    report = LoadReport(str(source), metadata=metadata)
    for key in [k for k in state if k.startswith(CLASSIFIER_PREFIX)]:
        if key not in expected or expected[key].shape != state[key].shape:
            report.skipped.append(key)
            del state[key]
    if not any(k.startswith(CLASSIFIER_PREFIX) for k in state) and not report.skipped:  # a headless backbone's file
        report.skipped = [k for k in expected if k.startswith(CLASSIFIER_PREFIX)]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")
               and not (k.startswith(CLASSIFIER_PREFIX) and report.skipped)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if strict and (missing or unexpected or mismatched):
        name = getattr(model, "arch_name", None) or type(model).__name__  # any nn.Module takes weights
        problems = [f"{len(v)} {what} ({listed(v, 3)})" for what, v in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if v]
        raise CheckpointError(f"{source}: does not fit {name}, probably another architecture: "
                              f"{'; '.join(problems)} keys")
    model.load_state_dict(state, strict=False)
    if isinstance(model, (ResNet, FeatureExtractor)):  # a resnets model takes the file's metadata too
        _apply_metadata(model, metadata, source, with_class_names=not report.skipped)
    return report


def _apply_metadata(model: ResNet | FeatureExtractor, metadata: dict[str, Any], source: str | Path,
                    with_class_names: bool = True) -> None:
    """The preprocessing and class names a file claims, checked before the model takes them: a file is
    untrusted, its metadata too. A head of N classes with M names, or a 1-channel preprocessing for a 3-channel
    model, is a file that contradicts itself."""
    try:
        if metadata.get("pretrained_cfg") is not None:
            if not isinstance(metadata["pretrained_cfg"], dict):
                raise ConfigError("pretrained_cfg is not a mapping")
            pretrained_cfg = PretrainedCfg.from_dict(metadata["pretrained_cfg"], base=model.pretrained_cfg)
            if pretrained_cfg.input_size[0] != model.pretrained_cfg.input_size[0]:
                raise ConfigError(f"pretrained_cfg is for {pretrained_cfg.input_size[0]}-channel input, the model "
                                  f"takes {model.pretrained_cfg.input_size[0]}")
            model.pretrained_cfg = pretrained_cfg
        names = metadata.get("class_names")
        if names is not None and with_class_names and isinstance(model, ResNet):
            if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
                raise ConfigError("class_names is not a list of names")
            model.class_names = [str(n) for n in names]
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: its metadata is not usable ({one_line(e)})") from None


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a weights file (or folder, `resolve_weights`) into `model`; see `load_state`."""
    state, metadata = read_state_dict(path)
    return load_state(model, state, metadata, resolve_weights(path), strict)


def model_metadata(model: nn.Module, class_names: list[str] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild `model` and its preprocessing from its weights file alone."""
    if not isinstance(model, ResNet):
        raise CheckpointError(f"a {type(model).__name__} was not made by resnets (it has no architecture config)")
    class_names = class_names if class_names is not None else model.class_names
    if class_names is not None and len(class_names) != model.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    return {
        "architecture": model.arch_name,
        "args": model.arch_args,
        "config": dataclasses.asdict(model.cfg),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": model.pretrained_cfg.to_dict(),
        "class_names": [str(n) for n in class_names] if class_names is not None else None,
    }


def save_weights(model: nn.Module, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Atomically write the model's tensors as safetensors, with `model_metadata` inside the file."""
    meta = model_metadata(model, class_names)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a NaN checkpoint would silently poison every later use of the file
        raise CheckpointError(f"refusing to save {path}: non-finite values in {listed(bad, 3)}")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(meta), DIGEST_KEY: content_digest(tensors)}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def build_from_metadata(meta: dict[str, Any], source: str | Path) -> ResNet:
    """The (untrained) model described by `model_metadata`'s output, with its preprocessing and class names."""
    if "optimizer" in meta and "progress" in meta:  # what `resnets train` resumes from: weights inside, no model
        raise CheckpointError(f"{source}: a training checkpoint (for `resnets train --resume`), not weights with "
                              f"their architecture; use {RUN_WEIGHTS[0]} or {RUN_WEIGHTS[1]} of its run folder")
    args, arch_name = meta.get("args"), meta.get("architecture")
    check_nesting(meta, source, "metadata")  # a torch.save file's metadata was never JSON
    if "config" not in meta:
        raise CheckpointError(f"{source}: architecture metadata is not a resnets config (no config)")
    cfg = checked_config(meta["config"], source, "metadata config")
    try:
        model = cfg.build(arch_name=arch_name if isinstance(arch_name, str) else None,
                          arch_args=args if isinstance(args, dict) else None)
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{source}: architecture metadata is not a resnets config ({one_line(e)})") from None
    _apply_metadata(model, meta, source)
    return model
