"""Optimizers and learning-rate schedules as small lookup tables."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on BN parameters and biases: decaying them only hurts (Goyal et al. 2017, timm default).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum),
    "nesterov": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=True),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.opt](param_groups(model, cfg.weight_decay), cfg)


def _cosine(progress: float, cfg: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(epoch: float, cfg: TrainConfig) -> float:
    return cfg.decay_rate ** int(epoch // cfg.decay_epochs)


def _multistep(epoch: float, cfg: TrainConfig) -> float:
    return cfg.decay_rate ** sum(epoch >= m for m in cfg.decay_milestones)


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at an optimizer step: linear warm-up from 1/100, then the schedule."""
    epoch = step / steps_per_epoch
    warmup = cfg.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return 0.01 + 0.99 * epoch / warmup
    if cfg.sched == "cosine":
        span = max(cfg.epochs - warmup, 1e-8)
        return _cosine(min(1.0, (epoch - warmup) / span), cfg)
    if cfg.sched == "step":
        return _step(epoch, cfg)
    if cfg.sched == "multistep":
        return _multistep(epoch, cfg)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step, so warm-up and cosine are smooth within an epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg))
