"""Typed options as dataclass fields: one field carries its default, its help, its choices and its group, and
from that come the command-line flags, the YAML keys and the checks of both. Defaults < YAML (-c) < flags."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .errors import ConfigError
from .messages import one_line

T = TypeVar("T")


def option(default: Any, help: str, *, group: str, choices: Sequence[Any] | None = None, short: str | None = None,
           metavar: str | None = None, const: Any = None) -> Any:
    """A dataclass field that is also a command-line option (`--field-name`, and `short` if given).

    `help` is one line; with a None default it says what None means. `choices` lists the allowed values of
    an enumeration (argparse checks flags against it, `check_choices` YAML values). `const`: the value of the
    flag given without one (`--pretrained` alone)."""
    metadata = dict(help=help, group=group, choices=tuple(choices) if choices is not None else None, short=short,
                    metavar=metavar, const=const)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _members(hint: Any) -> tuple[Any, ...]:
    """`int | None` -> (int, NoneType); `list[int]` -> (list,)."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(m) or m for m in members)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, groups: Sequence[tuple[str, str]]) -> None:
    """One flag per field of the dataclass `cls`, in argument groups (name, title) in that order. Defaults stay
    with the dataclass (`argparse.SUPPRESS`): the parsed namespace holds exactly the flags given."""
    hints = typing.get_type_hints(cls)
    titled = {name: parser.add_argument_group(title) for name, title in groups}
    defaults = cls()
    for f in dataclasses.fields(cls):
        meta = f.metadata
        members = _members(hints[f.name])
        # A field of a number or a word (`--lr 0.1`, `--lr auto`) takes the flag as text: from_options reads the number
        base = str if str in members else next(m for m in members if m is not type(None))
        default = getattr(defaults, f.name)
        help_text = meta["help"] + ("" if default is None else f" [default: {_shown(default)}]")
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs.update(type=typing.get_args(hints[f.name])[0], nargs="+")
        else:
            kwargs["type"] = base
        if meta.get("const") is not None:
            kwargs.update(nargs="?", const=meta["const"])
        if meta["choices"] is not None:
            kwargs["choices"] = [c for c in meta["choices"] if c is not None]
        if meta["metavar"] or meta["choices"] is None and base is not bool:
            kwargs["metavar"] = meta["metavar"] or {int: "N", float: "X", list: "N"}.get(base, "TEXT")
        names = [meta["short"], flag_name(f.name)] if meta["short"] else [flag_name(f.name)]
        titled[meta["group"]].add_argument(*names, **kwargs)


def from_options(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` with every key known and every value of its field's type, after undoing YAML's guesses;
    ConfigError naming the key otherwise."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    coerced = {key: _coerce(value, hints[key]) for key, value in values.items()}
    for key, value in coerced.items():
        _check_type(key, value, hints[key])
    return cls(**coerced)


def check_choices(obj: Any) -> None:
    """ConfigError for a field holding a value outside its `choices` (a YAML value; argparse checks flags)."""
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("choices")
        if allowed is not None and getattr(obj, f.name) not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"{flag_name(f.name)[2:]}={getattr(obj, f.name)!r} is not one of {shown}")


def _coerce(value: Any, hint: Any) -> Any:
    """Undo YAML's guesses: `amp: off` arrives as False and `lr: 1e-3` as a string. A field that takes a number
    or a word (`lr: auto`) keeps text that spells no number."""
    allowed = _members(hint)
    if isinstance(value, bool) and str in allowed and bool not in allowed:
        return "on" if value else "off"
    if isinstance(value, str):
        for number in (int, float):
            if number in allowed:
                try:
                    return number(value)
                except ValueError:
                    pass
    return value


def _check_type(key: str, value: Any, hint: Any) -> None:
    allowed = _members(hint)
    if value is None and type(None) in allowed:
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = "/".join("null" if a is type(None) else a.__name__ for a in allowed)
        raise ConfigError(f"option {key}: expected {names}, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of options as {field_name: value} (`batch-size` and `batch_size` alike)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# Flags that mean the same in every command that has them.
def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (a GPU when there is one), cpu, cuda or cuda:N [default: auto]")


def add_workers_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                        help=f"loader processes, 0: load in this process [default: {default}]")


def add_max_image_argument(parser: argparse.ArgumentParser, default: int) -> None:
    """--max-image-mb, as train's option of that name (`data.images.MAX_IMAGE_MB` is `default`: passed in, so
    that this module does not import the data stack)."""
    parser.add_argument("--max-image-mb", type=int, default=default, metavar="N",
                        help=f"image files larger than N MiB, and files that are not regular files (a FIFO, a "
                             f"device), are skipped and listed unread [default: {default}]")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """What a command that uses a trained model reads: --weights, --model, or both. `--pretrained` is
    --weights under train's (and timm's) name, so one spelling works everywhere."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", default=None, metavar="RUN|FOLDER|FILE|URL",
                        help="a run folder (its best weights), a model folder (save_pretrained, timm's), a weights "
                             "file, hf-hub:ORG/REPO, a URL, or a published set's name")
    # Always with a value: an optional one would swallow predict's image path (--model NAME alone already
    # means NAME's published weights)
    source.add_argument("--pretrained", dest="weights", metavar="SPEC", help="the same as --weights")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="without --weights: published weights (resnet50.tv2_in1k, or resnet50 for its default "
                             "set); with them, the architecture of a bare state dict (resnets files carry theirs)")
