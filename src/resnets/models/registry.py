"""Model registry: a name maps to a function returning the architecture's config."""
from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError, UnknownModelError
from .features import FeatureExtractor
from .weights import load_weights

_MODELS: dict[str, Callable[[], Any]] = {}


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register `fn` (returning a config with `.replace(**kw)` and `.build(**metadata)`) under its own name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, e.g. `list_models("res2net*")`."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def get_config(name: str, **overrides: Any) -> Any:
    """The architecture config of `name` with `overrides` applied; unknown names/keys are errors."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnets models`"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _MODELS[name]().replace(**overrides)


def create_model(name: str, pretrained: str | Path | None = None, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, like `timm.create_model`.

    Args:
        name: a name from `list_models()`.
        pretrained: weights to load (.safetensors, .pth/.pt state dict, a `save_pretrained` folder or a run
            folder). A classifier whose size differs from `num_classes` is skipped and reported.
        features_only: return a backbone whose forward gives each stage's output (a list).
        out_indices: which feature levels to return with `features_only` (0 = stem, 1..4 = stages).
        **overrides: architecture arguments (num_classes, in_chans, cardinality, base_width, stem,
            avg_down, output_stride, drop_path_rate, zero_init_last, global_pool, ...).
    """
    if pretrained is True:
        raise ConfigError("pretrained=True would need a download; pass the path of a weights file instead")
    if out_indices is not None and not features_only:
        raise ConfigError("out_indices only applies with features_only=True")
    model = get_config(name, **overrides).build(arch_name=name, arch_args=overrides)
    if pretrained:
        load_weights(model, pretrained)
    return FeatureExtractor(model, out_indices) if features_only else model
