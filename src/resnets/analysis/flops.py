"""Parameter and multiply-accumulate counts, measured with `torch.utils.flop_counter` on the meta device.

Meta tensors carry shapes but no data, so counting ResNet-152 costs milliseconds and no memory.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import build_model
from ..models.resnet import check_img_size


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_size_of(model: nn.Module, img_size: int | None = None) -> tuple[int, int, int]:
    chans, h, w = model.pretrained_cfg.input_size
    return (chans, h, w) if img_size is None else (chans, img_size, img_size)


def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch: int = 1) -> tuple[int, dict[str, int]]:
    """Total MACs of one forward pass and MACs per module name (flop counter's flops / 2)."""
    device = next(model.parameters()).device
    x = torch.empty((batch, *input_size), device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    root = type(model).__name__ + "."
    per_module = {name[len(root):]: sum(ops.values()) // 2
                  for name, ops in counter.get_flop_counts().items() if name.startswith(root)}
    return counter.get_total_flops() // 2, per_module


def meta_model(name: str, **overrides: Any) -> nn.Module:
    """The named model built on the meta device: shapes only, instant, no memory."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def model_stats(name: str, img_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Params and GMACs of a registered model at its default (or the given) input size."""
    model = meta_model(name, **overrides)
    check_img_size(model, img_size)
    size = input_size_of(model, img_size)
    macs, _ = count_macs(model, size)
    return dict(name=name, params=count_params(model), gmacs=macs / 1e9, input_size=size)
