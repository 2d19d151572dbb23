"""The ResNeXt paper's complexity-preserving templates (Xie et al. 2017, sec. 3.3 and Table 2).

For each cardinality C, find the group width d whose network has the parameter count closest to the
C=1 template (a ResNet with d=64). Counted on whole networks built on the meta device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.resnet import ResNetConfig, check_img_size
from .flops import count_macs, count_params

TEMPLATES = {
    "resnext50": ResNetConfig(layers=(3, 4, 6, 3)),
    "resnext101": ResNetConfig(layers=(3, 4, 23, 3)),
    "resnext152": ResNetConfig(layers=(3, 8, 36, 3)),
}


@dataclass
class DesignRow:
    cardinality: int
    width: int  # d, the width of each group in the first stage
    params: int
    gmacs: float

    @property
    def name(self) -> str:
        return f"{self.cardinality}x{self.width}d"


def _params(template: ResNetConfig, cardinality: int, width: int) -> int:
    with torch.device("meta"):
        return count_params(template.replace(cardinality=cardinality, base_width=width).build())


def design_widths(template: str, cardinalities: list[int], img_size: int = 224) -> list[DesignRow]:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    if not cardinalities or any(c < 1 for c in cardinalities):
        raise ConfigError("cardinalities must be positive integers")
    base = TEMPLATES[template]
    target = _params(base, 1, 64)
    rows = []
    for c in cardinalities:
        # Parameters grow monotonically with d: bisect for the first d at or above the target.
        lo, hi = 1, 64
        while _params(base, c, hi) < target:
            hi *= 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if _params(base, c, mid) < target else (lo, mid)
        candidates = [d for d in (lo - 1, lo) if d >= 1]
        d = min(candidates, key=lambda w: abs(_params(base, c, w) - target))
        with torch.device("meta"):
            model = base.replace(cardinality=c, base_width=d).build()
        check_img_size(model, img_size)
        macs, _ = count_macs(model, (3, img_size, img_size))
        rows.append(DesignRow(c, d, count_params(model), macs / 1e9))
    return rows
