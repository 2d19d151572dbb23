"""The preprocessing that belongs to a model's weights: input size, resize/crop, interpolation, normalisation.

One typed record under timm's name, `model.pretrained_cfg`. It reads as a mapping too (`cfg["input_size"]`,
`cfg.get("mean")`), as timm's models hand theirs out, so `timm.data.resolve_model_data_config(model)` and code
written for timm's dicts take a resnets model as it is. It travels inside every weights file and export.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True, eq=False)  # equality as a mapping's (below): it equals a dict with the same items
class PretrainedCfg(Mapping):
    """Args:
        input_size: (channels, height, width) the weights were trained at.
        interpolation: resize filter, one of INTERPOLATIONS.
        crop_pct: evaluation resizes the short side to size / crop_pct, then center-crops `size`.
        mean, std: per-channel normalisation of [0, 1] pixel values.
        test_input_size, test_crop_pct: what evaluation uses instead, where the weights were measured best at
            another size than they were trained at (timm's `test_input_size`); None: the same as training.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    test_input_size: tuple[int, int, int] | None = None
    test_crop_pct: float | None = None

    def __post_init__(self) -> None:
        # Frozen: the normalised values go in through object.__setattr__. Lists (from JSON) become tuples.
        for name in ("input_size", "mean", "std", "test_input_size"):
            value = getattr(self, name)
            if value is None and name.startswith("test_"):
                continue
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"pretrained_cfg {name}={value!r} is not a list")
            object.__setattr__(self, name, tuple(value))
        for name in ("input_size", "test_input_size"):
            size = getattr(self, name)
            if size is not None and (len(size) != 3 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536 for v in size)):
                raise ConfigError(f"pretrained_cfg {name}={size!r} is not (channels, height, width) of positive ints")
        size = self.input_size
        if self.test_input_size is not None and self.test_input_size[0] != size[0]:
            raise ConfigError(f"pretrained_cfg test_input_size={self.test_input_size!r} has other channels than "
                              f"input_size={size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != size[0] or not all(_finite_number(v) for v in values):
                raise ConfigError(f"pretrained_cfg {name}={values!r} needs one finite number per channel ({size[0]})")
        if not all(v > 0 for v in self.std):
            raise ConfigError(f"pretrained_cfg std={self.std!r} must be positive")
        for name in ("crop_pct", "test_crop_pct"):
            value = getattr(self, name)
            if not (value is None and name == "test_crop_pct" or _finite_number(value) and 0 < value <= 4):
                raise ConfigError(f"pretrained_cfg {name}={value!r} is not a number in (0, 4]")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"pretrained_cfg interpolation={self.interpolation!r} is not one of "
                              f"{', '.join(INTERPOLATIONS)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "PretrainedCfg | None" = None) -> "PretrainedCfg":
        """A config from a mapping (a weights file's metadata, timm's pretrained_cfg): the keys known here
        replace `base`'s (default: the defaults above); others (timm's url, license, ...) are not preprocessing."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in values.items() if k in known}
        if "input_size" in given:  # a test size and crop belong to the size they go with, not to base's
            given = {"test_input_size": None, "test_crop_pct": None, **given}
        return dataclasses.replace(base or cls(), **given)

    def replace(self, **changes: Any) -> "PretrainedCfg":
        return dataclasses.replace(self, **changes)

    def with_img_size(self, img_size: int | None) -> "PretrainedCfg":
        """The same preprocessing at a square `img_size` for training and evaluation alike (None: as it is)."""
        if img_size is None:
            return self
        return self.replace(input_size=(self.input_size[0], img_size, img_size), test_input_size=None,
                            test_crop_pct=None)

    def with_channels(self, channels: int) -> "PretrainedCfg":
        """The same preprocessing for `channels` input channels (a first conv adapted from RGB weights): one
        channel takes the mean of the RGB statistics, more repeat them."""
        if channels == self.input_size[0]:
            return self
        def pick(values: tuple[float, ...]) -> tuple[float, ...]:
            return (sum(values) / len(values),) if channels == 1 else tuple(
                values[i % len(values)] for i in range(channels))

        test = None if self.test_input_size is None else (channels, *self.test_input_size[1:])
        return self.replace(input_size=(channels, *self.input_size[1:]), test_input_size=test, mean=pick(self.mean),
                            std=pick(self.std))

    def for_eval(self) -> "PretrainedCfg":
        """What evaluation and prediction use: the test size and crop where the weights have them."""
        return self.replace(input_size=self.test_input_size or self.input_size,
                            crop_pct=self.crop_pct if self.test_crop_pct is None else self.test_crop_pct,
                            test_input_size=None, test_crop_pct=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), as written into weights files and exports; unset test values
        left out."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if v is not None}

    # Mapping: read-only access by key, as timm's dicts, which leave unset values out; equal to any mapping with the
    # same items.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)


def _finite_number(value: Any) -> bool:
    try:  # math.isfinite of an int past a float's range (10**400, from JSON) raises OverflowError
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False
