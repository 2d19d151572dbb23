"""What a resume state (checkpoint-*.pt) must hold, checked field by field before a run uses any of it. Its
checksum says the file is as it was written, not that what was written is a resume state: a hand-made file
with a valid checksum and `epoch: "2"`, a history that is no list, or a momentum buffer of another shape
would otherwise end in a traceback deep in the run, or (a fused optimizer's wrong-sized buffer) in a
corrupted heap. Each refusal is one CheckpointError naming the file and the field.

`check_resume_state` is called by `checkpoint.load_checkpoint`, the one place a resume state is read.
"""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ResnetsError
from ..messages import one_line
from ..models.metadata_schema import MAX_CLASSES, check_nesting, shown
from ..models.registry import build_model, get_config
from .config import TrainConfig, make_config
from .epoch import Progress
from .optim import make_optimizer

MAX_COUNT = 2**62  # steps, images, epochs: what an int64 counter holds, with room to add
MAX_DEPTH = 8  # an optimizer's state nests 3 levels, a rank's RNG state 4
MAX_RANKS = 2**16
MAX_EPOCHS = 10**6
HISTORY_KEYS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "seconds")  # what a run reads back


class _Invalid(Exception):
    """A field that is not what it must be: (field, value, what it must be); value MISSING when it is absent."""


MISSING = object()


def check_resume_state(state: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming `path` and the first field of `state` that is not what `resnets train --resume`
    needs: types, ranges, the model's tensors against the architecture its config names, the optimizer's
    against those, RNG states that restore (into scratch generators)."""
    check_nesting(state, path, "the state", MAX_DEPTH)
    try:
        _check(state)
    except _Invalid as e:
        field, value, expected = e.args
        problem = f" is missing ({expected})" if value is MISSING else f"={shown(value)} is not {expected}"
        raise CheckpointError(f"{path}: {field}{problem}") from None
    except ResnetsError as e:  # the config's own checks, which name the option
        raise CheckpointError(f"{path}: config: {one_line(e)}") from None


def _need(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise _Invalid(field, value, expected)


def _count(value: Any, field: str, low: int = 0, high: int = MAX_COUNT) -> None:
    _need(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, field, value,
          f"an integer from {low} to {high:,}")


def _number(value: Any, field: str, low: float = -math.inf, high: float = math.inf) -> None:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value <= high, field, value, f"a finite number in [{low}, {high}]")


def _mapping(value: Any, field: str) -> None:
    _need(isinstance(value, dict), field, value, "a mapping")  # MISSING too


def _names(value: Any, field: str) -> None:
    _need(isinstance(value, list) and len(value) <= MAX_CLASSES and all(isinstance(n, str) for n in value),
          field, value, "a list of class names")


def _check(state: dict[str, Any]) -> None:
    _count(state["epoch"], "epoch", 1, MAX_EPOCHS)
    _count(state["batch_in_epoch"], "batch_in_epoch")
    _count(state["global_step"], "global_step")
    for key in ("world_size", "global_batch"):
        if state.get(key) is not None:
            _count(state[key], key, 1)
    cfg = _check_config(state["config"])
    _check_progress(state.get("progress", MISSING))
    _check_history(state["history"])
    classes = _check_class_lists(state)
    model = _check_model(state["model"], cfg, classes)
    _check_optimizer(state["optimizer"], model, cfg)
    for key in ("scaler", "ema"):
        if state.get(key) is not None:
            _mapping(state[key], key)
    for key, value in (state.get("scaler") or {}).items():
        _number(value, f"scaler.{key}", 0)
    _check_ema(state.get("ema") or {}, model)
    _check_rng(state)


def _check_config(config: Any) -> TrainConfig:
    _mapping(config, "config")
    # Options this version does not have are left out, as resumed_config does: a checkpoint of an older resnets
    # whose option was since removed still resumes. The others: ConfigError naming one of another type or range
    cfg = make_config({k: v for k, v in config.items() if k in TrainConfig.field_names()}).resolved()
    try:
        get_config(cfg.model)
    except ResnetsError as e:
        raise _Invalid("config.model", cfg.model, f"a model resnets has ({one_line(e)})") from None
    return cfg


def _check_progress(progress: Any) -> None:
    _mapping(progress, "progress")
    for name in ("epoch", "samples_in_epoch", "global_step"):  # where the run is: what a resume cannot guess
        _need(name in progress, f"progress.{name}", MISSING, "present")
    fields = {f.name: f.type for f in dataclasses.fields(Progress)}
    for name in progress:
        _need(name in fields, f"progress.{str(name)[:40]}", progress[name],
              f"a field of Progress ({', '.join(fields)})")
    for name, value in progress.items():
        where = f"progress.{name}"
        if fields[name] in ("int", int):
            _count(value, where, 1 if name == "epoch" else 0, MAX_EPOCHS if name == "epoch" else MAX_COUNT)
        elif name == "best_top1":
            _number(value, where, -1.0, 100.0)
        else:
            _number(value, where, 0.0)


def _check_history(history: Any) -> None:
    _need(isinstance(history, list) and len(history) <= MAX_EPOCHS, "history", history, "a list of epoch rows")
    for i, row in enumerate(history):
        _need(isinstance(row, dict) and all(k in row for k in HISTORY_KEYS), f"history[{i}]", row,
              f"a row with {', '.join(HISTORY_KEYS)}")
        for key, value in row.items():
            _need(isinstance(key, str) and (value is None or isinstance(value, (int, float))), f"history[{i}].{key}",
                  value, "a number")
        _count(row["epoch"], f"history[{i}].epoch", 1, MAX_EPOCHS)


def _check_class_lists(state: dict[str, Any]) -> list[str]:
    data = state.get("data")
    if data is not None:
        _mapping(data, "data")
        if data.get("classes") is not None:
            _names(data["classes"], "data.classes")
        for key in ("train", "val"):
            if key in data:
                _count(data[key], f"data.{key}")
        if "digest" in data:
            _need(isinstance(data["digest"], str), "data.digest", data["digest"], "a hex digest")
    names = state.get("class_names")
    if names is not None:
        _names(names, "class_names")
    classes = (data or {}).get("classes") or names
    _need(classes is not None, "class_names", MISSING, "nor data.classes: the classes the model was trained on")
    _need(names is None or data is None or data.get("classes") is None or list(names) == list(data["classes"]),
          "class_names", names, "data.classes, as the state says elsewhere")
    return list(classes)


def _check_model(weights: Any, cfg: TrainConfig, classes: list[str]) -> torch.nn.Module:
    """The weights against the architecture the config names, built on the meta device (nothing allocated):
    every key there, each of its shape."""
    _need(isinstance(weights, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()),
          "model", weights, "a mapping of names to tensors")
    with torch.device("meta"):
        model = build_model(cfg.model, num_classes=len(classes), drop_path_rate=cfg.drop_path_rate)
    expected = model.state_dict()
    for key, tensor in expected.items():
        _need(key in weights, f"model.{key}", MISSING, f"a tensor of shape {tuple(tensor.shape)} ({cfg.model}, "
                                                     f"{len(classes)} classes)")
        _need(tuple(weights[key].shape) == tuple(tensor.shape), f"model.{key}", weights[key],
              f"of shape {tuple(tensor.shape)} ({cfg.model}, {len(classes)} classes)")
    unexpected = sorted(set(weights) - set(expected))
    _need(not unexpected, "model", unexpected, f"keys of {cfg.model} only")
    return model


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return f"{len(value)} numbers"
    return type(value).__name__


def _check_optimizer(saved: Any, model: torch.nn.Module, cfg: TrainConfig) -> None:
    """The optimizer's groups against the ones `make_optimizer` makes for the architecture (on the meta device):
    as many groups of as many parameters, options of the same kinds, per-parameter state of each parameter's
    shape (a fused SGD step writes a momentum buffer of the wrong size past its end)."""
    ok = isinstance(saved, dict) and isinstance(saved.get("state"), dict)
    _need(ok and isinstance(saved.get("param_groups"), list), "optimizer", saved,
          "an optimizer's state dict (state, param_groups)")
    if cfg.freeze_backbone:  # as the run builds it: only the classifier trains
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("fc."))
    fresh = make_optimizer(model, cfg)
    groups = saved["param_groups"]
    _need(len(groups) == len(fresh.param_groups), "optimizer.param_groups", groups,
          f"{len(fresh.param_groups)} groups ({cfg.opt} for {cfg.model})")
    shapes: dict[int, tuple[int, ...]] = {}
    for i, (group, made) in enumerate(zip(groups, fresh.param_groups)):
        where = f"optimizer.param_groups[{i}]"
        _need(isinstance(group, dict) and isinstance(group.get("params"), list), where, group,
              "a mapping with params")
        ids = group["params"]
        _need(len(ids) == len(made["params"]) and all(isinstance(n, int) and not isinstance(n, bool) for n in ids),
              f"{where}.params", ids, f"{len(made['params'])} parameter ids")
        shapes.update((n, tuple(p.shape)) for n, p in zip(ids, made["params"]))
        for key, value in group.items():
            if key != "params" and key in made:
                _need(_kind(value) == _kind(made[key]) and (_kind(value) != "number" or math.isfinite(value)),
                      f"{where}.{key}", value, f"of the kind of {shown(made[key])}")
    _need(len(shapes) == sum(len(g["params"]) for g in groups), "optimizer.param_groups", groups,
          "groups of distinct parameter ids")
    for n, entry in saved["state"].items():
        _need(n in shapes, f"optimizer.state[{shown(n)}]", entry, "the state of a parameter of param_groups")
        _need(isinstance(entry, dict), f"optimizer.state[{n}]", entry, "a mapping")
        for key, value in entry.items():
            where = f"optimizer.state[{n}].{key}"
            if torch.is_tensor(value):
                _need(value.numel() == 1 and value.dim() <= 1 or tuple(value.shape) == shapes[n], where, value,
                      f"a tensor of the parameter's shape {shapes[n]}, or a step count")
            else:
                _need(value is None or isinstance(value, (int, float)), where, value, "a tensor or a number")


def _check_ema(ema: dict[str, Any], model: torch.nn.Module) -> None:
    expected = {f"module.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in ema.items():
        _need(torch.is_tensor(value) and (key == "n_averaged" or tuple(value.shape) == expected.get(key)),
              f"ema.{key}", value, f"a tensor of shape {expected[key]}" if key in expected else "a key of the model")


def _check_rng(state: dict[str, Any]) -> None:
    """Each RNG state (one per rank, and rank 0's alone for older states) restored into scratch generators:
    exactly what `set_rng_state` will do, without touching the process's own."""
    per_rank = state.get("rng_per_rank")
    if per_rank is not None:
        _need(isinstance(per_rank, list) and 1 <= len(per_rank) <= MAX_RANKS, "rng_per_rank", per_rank,
              "a list of one RNG state per process")
    states = [("rng", state.get("rng"))] + [(f"rng_per_rank[{i}]", s) for i, s in enumerate(per_rank or [])]
    _need(state.get("rng") is not None or per_rank, "rng", MISSING, "nor rng_per_rank")
    for field, rng in states:
        if rng is None and field == "rng":
            continue
        _need(isinstance(rng, dict) and {"python", "numpy", "torch"} <= set(rng), field, rng,
              "a mapping with python, numpy and torch")
        try:
            random.Random().setstate(as_tuple(rng["python"]))
        except (TypeError, ValueError, OverflowError):
            raise _Invalid(f"{field}.python", rng["python"], "a state of Python's random") from None
        try:
            name, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss),
                                               float(gauss)))
        except (TypeError, ValueError, OverflowError, AttributeError):
            raise _Invalid(f"{field}.numpy", rng["numpy"], "a state of NumPy's random") from None
        try:
            torch.Generator().set_state(rng["torch"])
        except (TypeError, RuntimeError):
            raise _Invalid(f"{field}.torch", rng["torch"], "a state of torch's CPU generator") from None
        cuda = rng.get("cuda")
        _need(cuda is None or isinstance(cuda, list) and all(torch.is_tensor(t) and t.dtype == torch.uint8
                                                             for t in cuda), f"{field}.cuda", cuda,
              "a list of CUDA generator states")


def as_tuple(value: Any) -> Any:
    return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

