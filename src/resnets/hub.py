"""Models as a whole, from and to disk: `load_model` (a trained model from a run, a folder or a weights file),
`save_pretrained` / `from_pretrained` (a folder a model hub serves as is). Above the registry, which builds
a model from a name, and the weights files beneath it (`models/weights.py`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .errors import CheckpointError
from .fileio import atomic_write_json
from .messages import one_line
from .models import create_model
from .models.resnet import ResNet
from .models.weights import (CLASSIFIER_PREFIX, WEIGHTS_FILE, build_from_metadata, load_state, model_metadata,
                             read_state_dict, resolve_weights, save_weights)

CONFIG_FILE = "config.json"


def save_pretrained(model: nn.Module, directory: str | Path, class_names: list[str] | None = None) -> Path:
    """Write `config.json` + `model.safetensors` into `directory` (a layout a model hub serves as is)."""
    directory = Path(directory)
    save_weights(model, directory / WEIGHTS_FILE, class_names)
    atomic_write_json(directory / CONFIG_FILE, model_metadata(model, class_names))
    return directory


def from_pretrained(directory: str | Path) -> ResNet:
    """Rebuild a model saved by `save_pretrained` (architecture, weights, preprocessing, class names)."""
    directory = Path(directory)
    model = build_from_metadata(_read_json(directory / CONFIG_FILE), directory / CONFIG_FILE)
    state, metadata = read_state_dict(directory / WEIGHTS_FILE)
    load_state(model, state, metadata, directory / WEIGHTS_FILE)
    return model


def load_model(weights: str | Path, model_name: str | None = None, **overrides: Any) -> ResNet:
    """A ready model from a weights file, a run folder (its best weights) or a `save_pretrained` folder.

    Files written by resnets carry their architecture; a bare state dict (torchvision, timm, ...) needs
    `model_name`, and its head size is taken from the file. The file is read and verified once.
    """
    path = resolve_weights(weights)
    state, meta = read_state_dict(path)
    if meta.get("config") is not None and not model_name:
        model = build_from_metadata(meta, path)
    elif model_name:
        head = state.get(CLASSIFIER_PREFIX + "weight")
        if head is not None and "num_classes" not in overrides:
            overrides["num_classes"] = head.shape[0]
        model = create_model(model_name, **overrides)
    else:
        raise CheckpointError(f"{path}: a bare weights file does not say its architecture; pass --model NAME")
    load_state(model, state, meta, path)
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
