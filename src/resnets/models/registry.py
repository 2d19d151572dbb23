"""Model registry: a name maps to a function returning the architecture's config."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError, UnknownModelError
from .features import FeatureExtractor

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


def build_model(name: str, features_only: bool = False, out_indices: tuple[int, ...] | None = None,
                **overrides: Any) -> nn.Module:
    """A registered architecture, freshly initialised (`resnets.create_model` adds weights by name).

    Args:
        name: a name from `list_models()`.
        features_only: return a backbone whose forward gives each stage's output (a list).
        out_indices: which feature levels to return with `features_only` (0 = stem, 1..4 = stages).
        **overrides: architecture arguments (num_classes, in_chans, cardinality, base_width, stem,
            avg_down, output_stride, drop_path_rate, zero_init_last, global_pool, ...).
    """
    if out_indices is not None and not features_only:
        raise ConfigError("out_indices only applies with features_only=True")
    model = get_config(name, **overrides).build(arch_name=name, arch_args=overrides)
    return FeatureExtractor(model, out_indices) if features_only else model
