"""Optimizers and learning-rate schedules as small lookup tables."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import nn

if TYPE_CHECKING:  # for annotations only: the config lists this module's tables as its choices
    from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """The trainable parameters in groups, from the input to the head: weight decay on conv and linear weights
    only, and with `layer_decay` F each group's "lr_scale" (applied by `set_lr`): 1 for the head, F^k for the
    stage k stages before it (`stage_depths`). Without it, two groups: decayed, not decayed."""
    # No weight decay on BN parameters and biases: decaying them only hurts (Goyal et al. 2017, timm default).
    depths = stage_depths(model) if layer_decay is not None and layer_decay != 1.0 else None
    head = max(depths.values(), default=0) if depths else 0
    groups = {(depth, decays): {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                "lr_scale": layer_decay ** (head - depth) if depths else 1.0}
              for depth in range(head + 1) for decays in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(depths[name] if depths else 0, p.ndim > 1)]["params"].append(p)
    return list(groups.values())


def stage_depths(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth: 0 for the stem, k for the k-th stage (`feature_info`'s modules that have
    parameters: layer1..4, layer1..3 for the CIFAR nets), one more for the classifier and anything after the
    last stage. Whole stages rather than timm's single blocks (its ResNet `group_matcher(coarse=False)`), so
    that a decay means the same for ResNet-18 (8 blocks) and ResNet-152 (50: 0.9^51 = 0.5% at the stem)."""
    stages = [info["module"] for info in model.feature_info
              if any(True for _ in model.get_submodule(info["module"]).parameters())]
    head = {id(p) for p in model.get_classifier().parameters()}
    depths: dict[str, int] = {}
    for name, p in model.named_parameters():
        stage = next((k for k, s in enumerate(stages, 1) if name.startswith(f"{s}.")), None)
        if id(p) in head or stage is None and any(depths.values()):  # the classifier, or after the stages
            depths[name] = len(stages) + 1
        else:
            depths[name] = stage or 0
    return depths


def fused_optimizer(cls: type[torch.optim.Optimizer], params: Iterable, **kwargs) -> torch.optim.Optimizer:
    """`cls(params, fused=True, ...)` where torch has the fused kernel for every parameter's device and dtype
    (CUDA, and the CPU since torch 2.4), else the default implementation. Fused: one kernel over all
    parameters instead of a loop of small ones per tensor: half the step time on the CPU (BENCHMARKS.md,
    "Fused SGD on the CPU")."""
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    # torch checks the devices only at the first step(), so a wrong choice would fail the run there
    devices = _fused_kernel_devices()
    if not all(p.device.type in devices and p.is_floating_point() for p in tensors):
        return cls(params, **kwargs)
    try:
        optimizer = cls(params, fused=True, **kwargs)
    except RuntimeError:  # an option the fused kernel lacks, in some torch version
        return cls(params, **kwargs)
    if isinstance(optimizer, torch.optim.SGD):
        _start_momentum_at_zero(optimizer)
    return optimizer


def _start_momentum_at_zero(optimizer: torch.optim.SGD) -> None:
    """Give fused SGD its momentum buffers before the first step. Its first step otherwise allocates them
    uninitialised and relies on the kernel to fill them; a first step that is skipped (GradScaler's overflow
    at the initial fp16 scale, or resnets' non-finite guard) leaves them as garbage that every later step
    then adds in. Zeros give the same first step: buffer = momentum * 0 + gradient (without dampening)."""
    for group in optimizer.param_groups:
        if group["momentum"] > 0 and group["dampening"] == 0:
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


def _fused_kernel_devices() -> set[str]:
    try:  # private, but the list torch's own fused-kernel check uses
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def step_unless(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skip: torch.Tensor) -> None:
    """One optimizer step that changes nothing (parameters, momentum, Adam's counters) where the 0-dim
    device flag `skip` is 1, decided on the device where the optimizer can: torch's fused kernels take the
    flag as the `found_inf` attribute that GradScaler hands them. Other optimizers read it on the host."""
    if scaler.is_enabled():
        # fp16: the scaler finds non-finite gradients and skips on its own (the loop makes a non-finite loss
        # give non-finite gradients)
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused") and getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = skip.to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():
        optimizer.step()


OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: fused_optimizer(torch.optim.SGD, groups, lr=c.lr, momentum=c.momentum),
    "nesterov": lambda groups, c: fused_optimizer(torch.optim.SGD, groups, lr=c.lr, momentum=c.momentum, nesterov=True),
    "adamw": lambda groups, c: fused_optimizer(torch.optim.AdamW, groups, lr=c.lr),
    "adam": lambda groups, c: fused_optimizer(torch.optim.Adam, groups, lr=c.lr),
}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer (fused where torch can); its lr is set before every step by `set_lr`."""
    return OPTIMIZERS[cfg.opt](param_groups(model, cfg.weight_decay, cfg.layer_decay), cfg)


def _cosine(epoch: float, cfg: TrainConfig) -> float:
    progress = min(1.0, (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(epoch: float, cfg: TrainConfig) -> float:
    return cfg.decay_rate ** int(epoch // cfg.decay_epochs)


def _multistep(epoch: float, cfg: TrainConfig) -> float:
    return cfg.decay_rate ** sum(epoch >= m for m in cfg.decay_milestones)


# --sched: multiplier of the base lr after the warm-up, by (fractional) epochs done
SCHEDULES: dict[str, Callable[[float, TrainConfig], float]] = {
    "cosine": _cosine, "step": _step, "multistep": _multistep, "constant": lambda epoch, cfg: 1.0}


def lr_factor(epochs_done: float, cfg: TrainConfig) -> float:
    """Multiplier of the base lr after `epochs_done` (fractional) epochs: linear warm-up from 1/100, then
    the schedule. A function of training progress, not of a step count, so that a run resumed with another
    number of processes (other steps per epoch) keeps its schedule."""
    warmup = cfg.warmup_epochs
    if warmup > 0 and epochs_done < warmup:
        return 0.01 + 0.99 * epochs_done / warmup
    return SCHEDULES[cfg.sched](epochs_done, cfg)


# --scale-lr: how --lr, meant for --lr-base-batch, grows with the global batch (ratio: global / base)
LR_SCALING: dict[str, Callable[[float], float]] = {
    "none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}  # linear: Goyal et al. 2017


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """--lr, or with --scale-lr the lr for the global batch (batch x processes x accumulation), taking
    --lr as the rate for --lr-base-batch: linear or square-root scaling."""
    return cfg.lr * LR_SCALING[cfg.scale_lr](global_batch / cfg.lr_base_batch)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Every group's lr: the schedule's, times the group's own scale (--layer-decay)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)


def head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate of the groups at full scale (the head's, with --layer-decay): the schedule's own, as logged."""
    return max(group["lr"] for group in optimizer.param_groups)
