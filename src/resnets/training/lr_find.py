"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", sec. 3.3;
fastai's `lr_find`): from the run's starting weights, train a short while with the lr growing exponentially,
watch where the loss stops falling and turns into divergence, and suggest a decade below. The model,
optimizer and random state are put back afterwards, so the run then starts exactly as it would have with
that lr given.

`find_lr` sweeps with a training step (`step.py`) over the run's own loader; `resolve_auto_lr` is `--lr auto`.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import CheckpointError, DataError, TrainingError
from ..fileio import atomic_write_bytes
from .checkpoint import rng_state, set_rng_state
from .config import AUTO_LR, TrainConfig
from .distributed import Distributed
from .epoch import empty_batch_rule
from .finetune import head_only, set_trainable
from .optim import LR_SCALING, set_lr
from .sampling import EpochSampler
from .step import TrainStep

END_LR = 10.0  # fastai's: past where any net diverges (the sweep stops there first)
DEFAULT_STEPS = 100  # fastai's default too
MIN_STEPS = 50  # ~8 steps a decade of SGD's sweep: fewer, and the fall hardly stands out of the batch noise
DIVERGED = 4.0  # stop once the smoothed loss is 4x its best so far (fastai's rule): past there it only explodes
# The smoothed loss must fall this share below where it started, or the sweep shows no lr that trains. Batch noise
# alone takes its minimum ~3% below (digits, batch 32: 1.4% std after smoothing, the lowest of 50); a 50-step sweep
# of a ResNet-20 from scratch with label smoothing falls 9%.
MIN_DROP = 0.05
SMOOTHING_DECADES = 1.0  # the EMA of the loss averages over about this much of the lr range, see `smoothing`


@dataclass
class LrFind:
    """A range test: each step's lr and loss, the smoothed loss, and the lr it suggests (and why)."""

    lrs: list[float]
    losses: list[float]  # each step's mean training loss; the last is non-finite when the sweep ended so
    smoothed: list[float]  # of the finite losses
    suggestion: float
    reason: str
    lr_at_min: float  # where the smoothed loss is lowest


def default_start_lr(optimizer: torch.optim.Optimizer) -> float:
    """Where a sweep starts: two decades or more below any lr that trains, so that the curve starts flat. SGD
    steps by lr x gradient, useful from ~1e-3 (fine-tuning) to ~1 (from scratch, with BatchNorm); Adam by lr x a
    normalised gradient, useful from ~1e-5: fastai's 1e-7, chosen for Adam. Starting SGD two decades later
    gives its sweep 16 steps a decade instead of 12."""
    return 1e-7 if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1e-5


def sweep_config(cfg: TrainConfig) -> TrainConfig:
    """The options of a sweep's step: the run's, with a number for the lr (the sweep sets it at every step) and no
    EMA (a copy of the model that the sweep has no use for)."""
    return dataclasses.replace(cfg, lr=1.0, ema_decay=0.0)


def sweep_steps(batches_per_epoch: int, epochs: int, requested: int | None = None) -> int:
    """Steps of a sweep: `requested`, or 100, but no more than the run it tunes trains (a sweep that costs more
    than the training is not worth it on small data), and never fewer than MIN_STEPS."""
    if requested is not None:
        return requested
    return max(MIN_STEPS, min(DEFAULT_STEPS, batches_per_epoch * epochs))


def find_lr(step: TrainStep, loader: Iterable, sampler: EpochSampler | None = None, steps: int = DEFAULT_STEPS,
            start_lr: float | None = None, end_lr: float = END_LR, classifier_only: bool = False) -> LrFind:
    """Sweep the lr from `start_lr` (default: `default_start_lr`) to `end_lr` over `steps` optimizer steps of
    `step` (one accumulation cycle each: the run's own batch), stopping early once the loss diverges; then
    restore the model, optimizer, scaler, EMA, random state and which parameters train, bit for bit.

    Args:
        loader: training batches as the run draws them (its augmentation too), epoch after epoch as needed.
        sampler: the loader's `EpochSampler`, moved to the next epoch each time the loader runs out.
        classifier_only: train the classifier alone, as the run's first epoch does with --freeze-backbone or
            --head-epochs (finetune.py).

    Under torchrun every process sweeps its share of each batch in step: the losses are summed over the
    processes and the gradients averaged, so every process sees the same numbers and suggests the same lr.
    """
    start_lr = start_lr or default_start_lr(step.optimizer)
    if steps < 2 or not 0 < start_lr < end_lr:
        raise ValueError(f"a sweep needs >= 2 steps and 0 < start_lr < end_lr, got {steps}, {start_lr}, {end_lr}")
    saved = _Saved.take(step)
    try:
        lrs, losses = _sweep(step, loader, sampler, steps, start_lr, end_lr, classifier_only)
    finally:
        saved.restore(step)
    return suggest(lrs, losses)


def _sweep(step: TrainStep, loader: Iterable, sampler: EpochSampler | None, steps: int, start_lr: float,
           end_lr: float, classifier_only: bool) -> tuple[list[float], list[float]]:
    set_trainable(step.model, classifier_only)
    batches = _endless(loader, sampler, step.dist)
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    beta = smoothing(steps, start_lr, end_lr)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    step.optimizer.zero_grad(set_to_none=True)
    for i in range(steps):
        lr = start_lr * growth ** i
        set_lr(step.optimizer, lr, 1.0)
        totals = sum(step.forward_backward(*next(batches), cycle_end=k == step.accum_steps - 1)
                     for k in range(step.accum_steps))
        if step.dist.enabled:  # what DDP's backward would have done: nothing wraps the model yet
            step.dist.average_gradients(step.model)
        step.optimizer_step((totals[4] > 0).to(totals.dtype))
        loss_sum, _, _, n, nonfinite = totals.tolist()
        lrs.append(lr)
        losses.append(loss_sum / n if not nonfinite else math.nan)
        if nonfinite:
            break
        average = beta * average + (1 - beta) * losses[-1]
        smoothed = average / (1 - beta ** (i + 1))  # as `smooth`
        best = min(best, smoothed)
        if smoothed > DIVERGED * best:
            break
    step.optimizer.zero_grad(set_to_none=True)
    return lrs, losses


def _endless(loader: Iterable, sampler: EpochSampler | None, ctx: Distributed) -> Iterator[tuple[Any, Any]]:
    """The loader's batches, epoch after epoch, without those some process has no readable image of (every
    process skips them together, as the training loop does)."""
    empty_somewhere = empty_batch_rule(loader, ctx)
    for epoch in itertools.count(1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        yielded = False
        for images, labels in loader:
            if empty_somewhere(labels):
                continue
            yielded = True
            yield images, labels
        if not yielded:
            raise DataError("lr range test: the training data gave no batch of readable images")


def smoothing(steps: int, start_lr: float, end_lr: float) -> float:
    """The EMA factor that averages the loss over about SMOOTHING_DECADES of lr: 0.94 for 100 steps over SGD's 6
    decades (~16 steps). fastai's fixed 0.98 averages 50 steps, 3-4 decades of its sweep: the curve then trails the real
    loss by decades, and its minimum (the suggestion) with it; a sweep of fewer steps would trail further still."""
    steps_per_decade = (steps - 1) / math.log10(end_lr / start_lr)
    return 1 - 1 / max(1.0, SMOOTHING_DECADES * steps_per_decade)


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (dividing by 1 - beta^t, as Adam does): the first values
    are averages of the few losses so far rather than pulled towards 0."""
    out, average = [], 0.0
    for t, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** t))
    return out


def suggest(lrs: list[float], losses: list[float]) -> LrFind:
    """A tenth of the lr at the lowest point of the smoothed loss (fastai's `minimum` rule, lr_min / 10).

    The lowest point is the curve's most robust feature: where training turns into divergence, a jump far
    above the batch noise. A decade below it is a rate the run survives from its first steps on, with room for
    the batch noise of a real run. The rules read from the slope were measured and not taken: the steepest fall
    (Smith's "the loss starts to decrease rapidly", fastai's `steep`) marks where learning starts, not the
    best rate, and on a flat start it follows batch noise; fastai's `valley` (halfway down the longest falling
    run) lands lower still. The digits on a CIFAR ResNet-20 (nesterov, batch 32, 16 px), top-1 after one epoch at:
    the steepest fall, lr 0.0037: 45%; this rule, 0.008-0.017: 70-80%; the best fixed lr, ~0.06: 87%.

    TrainingError when the loss is non-finite from the first step, or never falls by MIN_DROP."""
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    if finite == 0:
        raise TrainingError(f"lr range test: the loss is non-finite at the first step, at lr {lrs[0]:.0e} (too "
                            f"small to matter): the model or the data diverges whatever the lr; check them (--amp "
                            f"off?) before choosing an lr")
    smoothed = smooth(losses[:finite], smoothing(len(lrs), lrs[0], lrs[-1]) if len(lrs) > 1 else 0.0)
    start = float(np.mean(losses[:min(finite, max(3, finite // 5))]))  # the flat start: lrs too small to matter
    low = int(np.argmin(smoothed))
    if not smoothed[low] < (1 - MIN_DROP) * start:
        ended = "diverged" if finite < len(losses) or smoothed[-1] > start else "ended"
        raise TrainingError(f"lr range test: the loss never fell over lr {lrs[0]:.0e}..{lrs[finite - 1]:.1e} "
                            f"(from {start:.3g} to {smoothed[low]:.3g} at best, then {ended}): no lr to suggest; "
                            f"give --lr explicitly")
    reason = f"a tenth of lr {lrs[low]:.2g}, where the smoothed loss is lowest"
    if low == len(losses) - 1:  # no turn: the minimum is only where the sweep stopped
        reason += "; it still fell at the end of the sweep"
    return LrFind(lrs=list(lrs), losses=list(losses), smoothed=smoothed, suggestion=float(lrs[low] / 10),
                  reason=reason, lr_at_min=float(lrs[low]))


class _Saved:
    """Copies of everything a sweep changes: model, optimizer, scaler, EMA, the random generators, and the
    modules' training modes and parameters' requires_grad (`set_trainable` sets them)."""

    def __init__(self, states: dict[str, Any], rng: dict[str, Any], modes: list[bool], trainable: list[bool]):
        self.states, self.rng, self.modes, self.trainable = states, rng, modes, trainable

    @classmethod
    def take(cls, step: TrainStep) -> "_Saved":
        parts = {"model": step.model, "optimizer": step.optimizer, "scaler": step.scaler}
        if step.ema is not None:
            parts["ema"] = step.ema
        # deepcopy: state_dict() hands out the live tensors, which the sweep's steps update in place
        states = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
        return cls(states, rng_state(), [m.training for m in step.model.modules()],
                   [p.requires_grad for p in step.model.parameters()])

    def restore(self, step: TrainStep) -> None:
        step.model.load_state_dict(self.states["model"])
        step.optimizer.load_state_dict(self.states["optimizer"])
        step.scaler.load_state_dict(self.states["scaler"])
        if step.ema is not None:
            step.ema.load_state_dict(self.states["ema"])
        for module, training in zip(step.model.modules(), self.modes):
            module.training = training
        for p, trainable in zip(step.model.parameters(), self.trainable):
            p.requires_grad_(trainable)
        set_rng_state(self.rng)


def resolve_auto_lr(cfg: TrainConfig, ctx: Distributed, loader: Iterable, sampler: EpochSampler,
                    make_step: Callable[[TrainConfig], TrainStep], resumed_from: Path | None = None) -> TrainConfig:
    """`cfg` with --lr auto replaced by the range test's suggestion (any other `cfg` as it is). `make_step`
    builds a step of the run for a config (the sweep's own, thrown away after); the loader and sampler are the
    run's, whose batches are functions of (seed, epoch, index), so the sweep leaves the run's data as it was.

    The sweep runs at the run's global batch (every process, each accumulation cycle one step), so the lr
    it finds is the run's step lr; with --scale-lr, --lr becomes the rate that scales to it. Rank 0's
    suggestion is every process's."""
    if cfg.lr != AUTO_LR:
        return cfg
    if resumed_from is not None:  # a checkpoint keeps the lr its run found: this one was not written by a run
        raise CheckpointError(f"{resumed_from}: its config has lr auto instead of the lr the run found")
    steps = sweep_steps(len(loader), cfg.epochs)  # type: ignore[arg-type]  (the run's loaders have a length)
    found = find_lr(make_step(sweep_config(cfg)), loader, sampler, steps, classifier_only=head_only(cfg, epoch=1))
    lr, reason = ctx.on_main(lambda: (found.suggestion, found.reason))
    given = lr_option(lr, cfg, ctx.world_size)
    if ctx.is_main:
        scaled = f"; --lr {given:.3g} with --scale-lr {cfg.scale_lr}" if given != lr else ""
        print(f"lr-find: suggested lr {lr:.3g} ({reason}){scaled}", file=sys.stderr)
    return dataclasses.replace(cfg, lr=given)


def lr_option(lr: float, cfg: TrainConfig, world_size: int) -> float:
    """The --lr that gives a step of `cfg`'s global batch the rate `lr`: `lr` itself, or with --scale-lr the rate
    for --lr-base-batch that scales to it (the inverse of `optim.scaled_lr`)."""
    global_batch = cfg.batch_size * world_size * cfg.accum_steps
    return lr / LR_SCALING[cfg.scale_lr](global_batch / cfg.lr_base_batch)


def plot_lr_find(found: LrFind, path: str | Path, title: str = "") -> Path:
    """Loss against lr (log scale): each step's loss, the smoothed curve, its lowest point and the suggestion
    marked; PNG, written atomically."""
    from matplotlib.figure import Figure  # only when plotting: run.py imports this module for every run

    fig = Figure(figsize=(7, 4.5))  # no pyplot: the caller's backend and figure state stay untouched
    ax = fig.subplots()
    finite = len(found.smoothed)
    ax.plot(found.lrs[:finite], found.losses[:finite], ".", color="0.7", markersize=3, label="loss per step")
    ax.plot(found.lrs[:finite], found.smoothed, "-", color="C0", label="smoothed")
    ax.plot([found.lr_at_min], [min(found.smoothed)], "v", color="C1", label=f"lowest at lr {found.lr_at_min:.2g}")
    ax.axvline(found.suggestion, color="C3", linestyle="--", label=f"suggested lr {found.suggestion:.2g}")
    ax.set_xscale("log")
    # Up to a little above where the loss started: the last steps of a diverging sweep would squash the curve
    top = max(found.smoothed[:max(3, finite // 5)])
    ax.set_ylim(min(found.smoothed) * 0.9, top * 1.3)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss", title=title or "learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())
