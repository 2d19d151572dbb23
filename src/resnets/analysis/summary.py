"""Per-layer summary: name, type, output shape, params, MACs, and totals with an activation estimate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models.resnet import check_img_size
from .flops import count_macs, count_params, input_size_of, meta_model


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass
class Summary:
    model: str
    input_size: tuple[int, int, int]
    rows: list[LayerRow]
    params: int
    trainable_params: int
    macs: int
    activation_bytes: int  # outputs of every leaf layer, float32, batch 1: what a training step keeps alive

    def format(self) -> str:
        widths = (max([len(r.name) for r in self.rows] + [5]), max([len(r.kind) for r in self.rows] + [4]), 20)
        lines = [f"{'layer':<{widths[0]}}  {'type':<{widths[1]}}  {'output shape':<{widths[2]}}  "
                 f"{'params':>12}  {'MACs':>15}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            shape = "x".join(str(s) for s in r.output_shape)
            lines.append(f"{r.name:<{widths[0]}}  {r.kind:<{widths[1]}}  {shape:<{widths[2]}}  "
                         f"{r.params:>12,}  {r.macs:>15,}")
        lines.append("-" * len(lines[0]))
        c, h, w = self.input_size
        lines += [
            f"model: {self.model}  input: 1x{c}x{h}x{w}",
            f"params: {self.params:,} (trainable {self.trainable_params:,})",
            f"MACs: {self.macs:,} ({self.macs / 1e9:.2f} G)",
            f"activation memory (leaf outputs, fp32, batch 1): {self.activation_bytes / 2**20:,.1f} MiB",
        ]
        return "\n".join(lines)


def summarize(name: str, img_size: int | None = None, depth: int | None = None, **overrides: Any) -> Summary:
    """Summarise a registered model. `depth` groups rows at that module depth (1 = stem pieces and stages)."""
    if depth is not None and depth < 1:
        raise ConfigError(f"depth must be >= 1 (1: the stem's pieces and the stages), got {depth}")
    model = meta_model(name, **overrides)
    check_img_size(model, img_size)
    size = input_size_of(model, img_size)
    modules = dict(model.named_modules())
    leaves = {n for n, m in modules.items() if n and not any(True for _ in m.children())}
    shown = leaves if depth is None else {n for n in modules if n and n.count(".") < depth and
                                           (n.count(".") == depth - 1 or n in leaves)}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[n].register_forward_hook(_shape_hook(shapes, n)) for n in shown | leaves]
    try:
        macs, per_module = count_macs(model, size)
    finally:
        for h in hooks:
            h.remove()
    rows = [LayerRow(n, type(modules[n]).__name__, shapes.get(n, ()), count_params(modules[n]), per_module.get(n, 0))
            for n in modules if n in shown and n in shapes]
    activation = sum(_numel(shapes[n]) * 4 for n in leaves if n in shapes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Summary(name, size, rows, count_params(model), trainable, macs, activation)


def _shape_hook(shapes: dict[str, tuple[int, ...]], name: str):
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            shapes[name] = tuple(output.shape)

    return hook


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
