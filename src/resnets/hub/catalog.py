"""The published weights resnets knows by name: a table (weights.csv, written by tools/weights_catalog.py from
timm's pretrained cfgs and its ImageNet results), one row per weight set `architecture.tag`."""
from __future__ import annotations

import csv
import fnmatch
import functools
from dataclasses import dataclass
from importlib import resources

from ..errors import UnknownModelError
from ..models.pretrained_cfg import PretrainedCfg


@dataclass(frozen=True)
class WeightSet:
    """One published set of weights for one architecture."""

    name: str  # architecture.tag, e.g. resnet50.a1_in1k
    source: str  # "hf-hub:<repo id>" (Hugging Face Hub) or an https URL
    sha256: str  # for a URL: the hex digits of its sha256 that the file's name carries (torch.hub's check)
    pretrained_cfg: PretrainedCfg  # the preprocessing the set was trained and evaluated with
    num_classes: int  # 0: a backbone without a classifier
    labels: str  # "imagenet-1k", or "" when the set names no classes
    license: str
    top1: float | None  # ImageNet-1k top-1 (%) at `top1_size`, as timm evaluated the set
    top1_size: int | None
    default: bool  # the set `pretrained=True` means for its architecture

    @property
    def architecture(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


def _row(row: dict[str, str]) -> WeightSet:
    size, test = int(row["input_size"]), row["test_input_size"]
    cfg = PretrainedCfg(input_size=(3, size, size), interpolation=row["interpolation"], crop_pct=float(row["crop_pct"]),
                        mean=tuple(map(float, row["mean"].split())), std=tuple(map(float, row["std"].split())),
                        test_input_size=(3, int(test), int(test)) if test else None,
                        test_crop_pct=float(row["test_crop_pct"]) if row["test_crop_pct"] else None)
    return WeightSet(row["weights"], row["source"], row["sha256"], cfg, int(row["num_classes"]), row["labels"],
                     row["license"], float(row["top1"]) if row["top1"] else None,
                     int(row["top1_size"]) if row["top1_size"] else None, row["default"] == "1")


@functools.cache
def catalog() -> dict[str, WeightSet]:
    """Every weight set by name, in the table's order."""
    with resources.files(__package__).joinpath("weights.csv").open(newline="", encoding="utf-8") as f:
        return {row["weights"]: _row(row) for row in csv.DictReader(f)}


def list_weights(pattern: str = "*") -> list[WeightSet]:
    """Weight sets whose name (architecture.tag) matches a wildcard; `resnet50` alone means `resnet50.*`."""
    pattern = pattern if "." in pattern or "*" in pattern else f"{pattern}.*"
    return [w for name, w in catalog().items() if fnmatch.fnmatch(name, pattern)]


def find_weights(name: str) -> WeightSet:
    """The set `architecture.tag`, or an architecture's default set; UnknownModelError saying what exists."""
    arch, dot, tag = name.partition(".")
    sets = [w for w in catalog().values() if w.architecture == arch]
    found = next((w for w in sets if (w.tag == tag if dot else w.default)), None)
    if found is not None:
        return found
    if not sets:
        raise UnknownModelError(f"no published weights for {arch!r} (`resnets weights` lists every set)")
    raise UnknownModelError(f"{arch} has no weights tagged {tag!r}; it has {', '.join(w.tag for w in sets)}")
