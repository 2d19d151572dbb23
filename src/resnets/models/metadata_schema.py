"""What a weights file's metadata or a model folder's config.json may say, checked before anything is built: a
file is untrusted, its metadata too. `layers: [10**7, 3, 3]` would otherwise build until memory runs out,
`num_classes: 10**12` fail in the allocator, and JSON nested 1,000 deep in Python's recursion limit.

Every reader of such metadata goes through here: `read_json_file` / `parse_json` for the text, `checked_config`
for an architecture (field by field, then as a whole, then its size, counted on the meta device, which
allocates nothing). A refusal is one CheckpointError naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, ConfigError
from ..fileio import read_bounded
from .blocks import BLOCKS
from .layers import ATTENTION, GlobalPool
from .resnet import STEMS, ResNetConfig

MAX_JSON_BYTES = 16 * 2**20  # resnets' config.json of an ImageNet-21k head (21,843 names) is under 1 MiB
MAX_JSON_DEPTH = 16  # timm's and resnets' own configs nest 3 levels deep
MAX_STAGES = 8
MAX_BLOCKS_PER_STAGE = 512  # the deepest published ResNet, He et al.'s 1202-layer CIFAR net, has 200
MAX_BLOCKS = 1024  # counting the params of 1,024 blocks on the meta device takes under a second
MAX_WIDTH = 2**16  # channels, group width, stem width
MAX_CLASSES = 10**6
MAX_IN_CHANS = 1024
MAX_PARAMS = 2 * 10**9  # 8 GB of fp32 weights; the largest ResNet-family nets published have ~1e9

class _Short(reprlib.Repr):
    def repr_Tensor(self, x: torch.Tensor, level: int) -> str:  # noqa: N802 (reprlib's naming)
        return f"<tensor of shape {tuple(x.shape)}>"


_short = _Short()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 6, 4, 2


def shown(value: Any) -> str:
    """A value as a message may quote it: short, and bounded however deeply it nests."""
    return _short.repr(value)


def read_json_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path` (a config.json), read only if it is a regular file of at most MAX_JSON_BYTES:
    a FIFO would block the read forever, /dev/zero fill the memory."""
    path = Path(path)
    try:
        text = read_bounded(path, MAX_JSON_BYTES, "a config holds")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: not readable ({e.strerror or e})") from None
    data = parse_json(text, path, "the file")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def parse_json(text: str | bytes, source: str | os.PathLike, what: str) -> Any:
    """`what` (a metadata entry of `source`) parsed as JSON, refused when it is larger or nests deeper than
    any metadata resnets or timm write. Whether json.loads reaches 1,000 levels depends on the interpreter's
    recursion limit: both outcomes end here as the same refusal."""
    if len(text) > MAX_JSON_BYTES:
        raise CheckpointError(f"{source}: {what} is {len(text):,} bytes of JSON, more than metadata holds "
                              f"({MAX_JSON_BYTES:,} at most)")
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{source}: {what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # UnicodeDecodeError too
        raise CheckpointError(f"{source}: {what} is not JSON ({str(e).splitlines()[0][:120]})") from None
    check_nesting(data, source, what)
    return data


def check_nesting(value: Any, source: str | os.PathLike, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """CheckpointError when `value`'s dicts and lists nest deeper than `limit`, naming the top-level key under
    which they do. Walked without recursion: the point is to refuse what recursion would choke on."""
    stack = [(value, 0, None)]
    while stack:
        item, depth, top = stack.pop()
        if depth > limit:
            where = f"{what}: {top}" if top is not None else what
            raise CheckpointError(f"{source}: {where} nests deeper than {limit} levels")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1, k if top is None else top) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1, top) for v in item)


def _integer_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _counts(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, (list, tuple)) and 1 <= len(v) <= MAX_STAGES
                      and all(_integer_in(low, high)(n) for n in v))


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1


# Each ResNetConfig field: (a valid value?, what a valid value is)
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "block": (lambda v: isinstance(v, str) and v in BLOCKS, f"one of {', '.join(BLOCKS)}"),
    "layers": (_counts(1, MAX_BLOCKS_PER_STAGE),
               f"a list of 1 to {MAX_STAGES} block counts, each 1 to {MAX_BLOCKS_PER_STAGE}"),
    "channels": (_counts(1, MAX_WIDTH), f"a list of 1 to {MAX_STAGES} widths, each 1 to {MAX_WIDTH:,}"),
    "expansion": (lambda v: v is None or _integer_in(1, 64)(v), "null or an integer from 1 to 64"),
    "cardinality": (_integer_in(1, MAX_WIDTH), f"an integer from 1 to {MAX_WIDTH:,}"),
    "base_width": (_integer_in(1, MAX_WIDTH), f"an integer from 1 to {MAX_WIDTH:,}"),
    "scale": (_integer_in(1, 64), "an integer from 1 to 64"),
    "stem": (lambda v: isinstance(v, str) and v in STEMS, f"one of {', '.join(STEMS)}"),
    "stem_width": (_integer_in(1, MAX_WIDTH), f"an integer from 1 to {MAX_WIDTH:,}"),
    "avg_down": (lambda v: isinstance(v, bool), "true or false"),
    "zero_pad_shortcut": (lambda v: isinstance(v, bool), "true or false"),
    "attention": (lambda v: isinstance(v, (str, type(None))) and v in ATTENTION, "null or 'se'"),
    "num_classes": (_integer_in(0, MAX_CLASSES), f"an integer from 0 to {MAX_CLASSES:,}"),
    "in_chans": (_integer_in(1, MAX_IN_CHANS), f"an integer from 1 to {MAX_IN_CHANS:,}"),
    "output_stride": (lambda v: _integer_in(8, 32)(v) and v in (8, 16, 32), "8, 16 or 32"),
    "global_pool": (lambda v: isinstance(v, str) and v in GlobalPool.kinds, f"one of {', '.join(GlobalPool.kinds)}"),
    "drop_rate": (_fraction, "a number in [0, 1)"),
    "drop_path_rate": (_fraction, "a number in [0, 1)"),
    "zero_init_last": (lambda v: isinstance(v, bool), "true or false"),
}
assert set(FIELDS) == {f.name for f in dataclasses.fields(ResNetConfig)}, "a ResNetConfig field without a rule"


def check_fields(fields: Any, source: str | os.PathLike, what: str) -> dict[str, Any]:
    """`fields` (architecture arguments read from `source`, under `what`) checked one by one against FIELDS;
    returned with lists as tuples, as ResNetConfig holds them."""
    if not isinstance(fields, Mapping):
        raise CheckpointError(f"{source}: {what} is not a mapping but {shown(fields)}")
    unknown = sorted(map(str, set(fields) - set(FIELDS)))
    if unknown:
        raise CheckpointError(f"{source}: {what} has unknown field(s) {', '.join(shown(k) for k in unknown)}; "
                              f"valid: {', '.join(FIELDS)}")
    for name, value in fields.items():
        ok, expected = FIELDS[name]
        if not ok(value):
            raise CheckpointError(f"{source}: {what} field {name}={shown(value)} is not {expected}")
    if sum(fields.get("layers", ())) > MAX_BLOCKS:
        raise CheckpointError(f"{source}: {what} field layers={shown(fields['layers'])} has more than "
                              f"{MAX_BLOCKS} blocks in all")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def checked_config(fields: Any, source: str | os.PathLike, what: str = "config",
                   base: ResNetConfig | None = None) -> ResNetConfig:
    """The ResNetConfig that `fields` (read from `source`) make of `base` (default: ResNetConfig()), each field
    within its bounds, the fields consistent, and the network within MAX_PARAMS; nothing is allocated."""
    cfg = (base or ResNetConfig()).replace(**check_fields(fields, source, what))
    try:
        cfg.validate()
    except ConfigError as e:
        raise CheckpointError(f"{source}: {what} is not a valid architecture ({e})") from None
    check_size(cfg, source, what)
    return cfg


def parameter_count(cfg: ResNetConfig) -> int:
    """Parameters of the network `cfg` describes, built on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = cfg.build()
    return sum(p.numel() for p in model.parameters())


def check_size(cfg: ResNetConfig, source: str | os.PathLike, what: str = "config") -> None:
    """CheckpointError when `cfg` (within each field's bounds) still makes a network of more than MAX_PARAMS
    parameters (wide stages times many classes, say)."""
    if sum(cfg.layers) > MAX_BLOCKS:
        raise CheckpointError(f"{source}: {what} field layers={shown(cfg.layers)} has more than {MAX_BLOCKS} "
                              f"blocks in all")
    count = parameter_count(cfg)
    if count > MAX_PARAMS:
        raise CheckpointError(f"{source}: {what} describes a network of {count:,} parameters, more than "
                              f"{MAX_PARAMS:,} (layers={shown(cfg.layers)}, channels={shown(cfg.channels)}, "
                              f"base_width={cfg.base_width}, num_classes={cfg.num_classes})")
