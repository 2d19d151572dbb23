"""One epoch of training: the optimizer step, gradient accumulation, the non-finite guard, running metrics."""
from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from ..data.transforms import DeviceNormalize
from ..errors import ResnetsError
from .config import TrainConfig
from .distributed import Distributed
from .loop import autocast_context, topk_hits
from .optim import lr_factor, set_lr, step_unless


class TrainingError(ResnetsError):
    """The run cannot go on (e.g. the loss became NaN)."""


@dataclass
class Progress:
    """Where a run is: saved in every resume state, so a resumed run continues exactly."""

    epoch: int = 1
    samples_in_epoch: int = 0  # positions of the epoch's data order consumed, by all processes together
    batch_in_epoch: int = 0  # batches of `epoch` each process trained (messages; resuming uses samples_in_epoch)
    global_step: int = 0  # optimizer steps
    best_top1: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0
    nonfinite_in_a_row: int = 0
    loss_sum: float = 0.0  # running totals of the current epoch, over all processes
    correct1: int = 0
    correct5: int = 0
    seen: int = 0  # images of the steps taken: what the loss and accuracy are over
    trained: int = 0  # images forwarded, skipped steps' too: what the epoch's time was spent on
    seconds: float = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.samples_in_epoch, self.batch_in_epoch = epoch, 0, 0
        self.loss_sum, self.correct1, self.correct5, self.seen, self.trained, self.seconds = 0.0, 0, 0, 0, 0, 0.0


@dataclass
class Run:
    """The live objects of a training run, in one place for the loop and the resume state."""

    model: nn.Module  # the bare model: its state is what gets saved
    step_model: nn.Module  # what the step calls: `model`, its DDP wrapper, or a compiled one of these
    ddp: nn.Module | None  # the DDP wrapper, for `no_sync` while accumulating
    optimizer: torch.optim.Optimizer
    base_lr: float  # --lr, scaled to the global batch when asked
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    criterion: nn.Module
    mixer: v2.Transform | None
    device: torch.device
    amp: str
    normalize: DeviceNormalize  # uint8 batches -> normalised float, in the model's memory format
    batches_per_epoch: int  # per process, in a whole epoch
    global_batch: int  # images per batch over all processes
    dist: Distributed
    cuda_graphs: bool = False  # compiled with CUDA graphs (--compile-mode reduce-overhead or max-autotune)

    def epochs_done(self, progress: Progress) -> float:
        """Training progress in (fractional) epochs, the clock of the lr schedule."""
        samples_per_epoch = max(self.batches_per_epoch * self.global_batch, 1)
        return progress.epoch - 1 + min(progress.samples_in_epoch / samples_per_epoch, 1.0)


def _freeze_bn_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _BatchNormStatistics:
    """The running statistics of the BN layers in training mode, as they were before an accumulation cycle,
    put back when the cycle's step is skipped: a forward that goes non-finite writes NaN into them, and
    validation, the EMA and every later batch would inherit it. A few kernels per cycle, no host sync:
    one copy of all statistics (about 100k numbers for ResNet-50), and a masked copy back."""

    def __init__(self, model: nn.Module):
        self.buffers = [b for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
                        for b in (m.running_mean, m.running_var)]
        self.sizes = [b.numel() for b in self.buffers]
        self.saved: torch.Tensor | None = None

    def save(self) -> None:
        if self.buffers:
            self.saved = torch.cat(self.buffers)

    def restore_if(self, skip: torch.Tensor) -> None:
        """Put the saved statistics back where `skip` (a device flag) is set. num_batches_tracked still counts
        the skipped batches: it only matters for BN with momentum=None, which no model here uses."""
        if self.saved is not None:
            kept = torch.where(skip > 0, self.saved, torch.cat(self.buffers))
            torch._foreach_copy_(self.buffers, list(kept.split(self.sizes)))
            self.saved = None


@dataclass
class _StepReport:
    """What one batch tells the host: loss x n, top-1 and top-5 hits, n, non-finite flag (summed over the
    processes), copied without waiting; `ready` says when the copy has landed (None: it is there)."""

    stats: torch.Tensor | None  # None: a batch no process had a readable image of
    ready: torch.cuda.Event | None
    batch_in_epoch: int
    cycle_end: bool  # the last batch of an accumulation cycle: its optimizer step follows it

    def values(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.stats.tolist()  # type: ignore[union-attr]


def _report(stats: torch.Tensor, batch_in_epoch: int, cycle_end: bool) -> _StepReport:
    if stats.device.type != "cuda":
        return _StepReport(stats.cpu(), None, batch_in_epoch, cycle_end)
    host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
    host.copy_(stats, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return _StepReport(host, ready, batch_in_epoch, cycle_end)


def train_one_epoch(run: Run, loader: Iterable, cfg: TrainConfig, progress: Progress,
                    checkpoint: Callable[[], None]) -> dict[str, float]:
    """Train from `progress.samples_in_epoch` to the end of `progress.epoch`; `checkpoint()` every
    `cfg.checkpoint_every` optimizer steps. `loader` yields this process's share of the rest of the epoch.

    No host sync per step: the non-finite guard skips a step on the device (`step_unless`), and each
    batch's numbers reach the host one batch late, read once the next batch's work is queued, so the GPU
    always has a step to run while the host waits. A non-finite loss skips its whole accumulation cycle."""
    model, optimizer, ctx = run.model, run.optimizer, run.dist
    model.train()
    if cfg.freeze_backbone:  # frozen statistics too: BN layers of a frozen backbone stay in eval mode
        _freeze_bn_statistics(model)
    # Only a run that survives a non-finite step needs its BN statistics guarded; without --skip-nonfinite
    # it stops there.
    bn_statistics = _BatchNormStatistics(model) if cfg.skip_nonfinite else None
    start = time.perf_counter() - progress.seconds
    remaining = len(loader)  # type: ignore[arg-type]
    bar = tqdm(loader, desc=f"epoch {progress.epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=None if cfg.progress and ctx.is_main else True, file=sys.stderr)
    pending: deque[_StepReport] = deque()
    cycle_skip: torch.Tensor | None = None  # device flag: a batch of this accumulation cycle was non-finite
    # The cycle being read, on the host: its batches' numbers count once its step is known to be taken
    cycle = dict(batches=0, sums=[0.0, 0.0, 0.0, 0.0], nonfinite_at="")
    saved_at = progress.global_step  # the step last checkpointed: the state this epoch started from is saved
    # Only a loader of files can hand out a batch with nothing readable in it; agreeing on that costs every
    # step a host-side exchange between the processes, which the GPU-resident store does without.
    may_be_empty = getattr(loader, "yields_empty_batches", True)

    def read(report: _StepReport) -> None:  # in batch order
        if report.stats is not None:
            loss_sum, c1, c5, seen, nonfinite = report.values()
            cycle["batches"] += 1
            if nonfinite and not cycle["nonfinite_at"]:  # on any process: the averaged gradients are poisoned
                cycle["nonfinite_at"] = (f"epoch {progress.epoch}, step {progress.global_step + 1} "
                                         f"(batch {report.batch_in_epoch})")
                cycle["loss"] = loss_sum / seen if ctx.world_size == 1 and seen else "non-finite"
            cycle["sums"] = [a + b for a, b in zip(cycle["sums"], (loss_sum, c1, c5, seen))]
            progress.trained += int(seen)
        if report.cycle_end:
            end_cycle()
        progress.seconds = time.perf_counter() - start
        if progress.seen:
            bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.3f}",
                            top1=f"{100 * progress.correct1 / progress.seen:.1f}",
                            img_s=f"{progress.trained / progress.seconds:.0f}")

    def end_cycle() -> None:
        where = cycle["nonfinite_at"]
        if where:  # the step was skipped on the device; the limit counts skipped steps in a row
            if progress.nonfinite_in_a_row >= cfg.skip_nonfinite:
                raise TrainingError(f"loss became {cycle['loss']} at {where}; try a lower --lr, --clip-grad, "
                                    f"or --skip-nonfinite N")
            progress.nonfinite_in_a_row += 1
            if ctx.is_main:
                print(f"warning: skipped a non-finite loss at {where} "
                      f"({progress.nonfinite_in_a_row} in a row, at most {cfg.skip_nonfinite})", file=sys.stderr)
        elif cycle["batches"]:
            progress.nonfinite_in_a_row = 0
            progress.global_step += 1
            loss_sum, c1, c5, seen = cycle["sums"]
            progress.loss_sum += loss_sum
            progress.correct1, progress.correct5 = progress.correct1 + int(c1), progress.correct5 + int(c5)
            progress.seen += int(seen)
        cycle.update(batches=0, sums=[0.0, 0.0, 0.0, 0.0], nonfinite_at="")

    optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(bar):
        if i % cfg.accum_steps == 0:  # the rate of the coming step, from the progress before it
            set_lr(optimizer, run.base_lr, lr_factor(run.epochs_done(progress), cfg))
            if bn_statistics is not None:
                bn_statistics.save()
        progress.batch_in_epoch += 1
        progress.samples_in_epoch += run.global_batch
        cycle_end = (i + 1) % cfg.accum_steps == 0 or i + 1 == remaining
        # Every file of the batch was unreadable: the batch still counts (for resuming mid-epoch) and is
        # skipped by every process, since one process alone leaving the step would stall DDP's all-reduce.
        if may_be_empty and ctx.any(not len(labels)):
            pending.append(_StepReport(None, None, progress.batch_in_epoch, cycle_end))
            if cycle_end and cycle_skip is not None and run.ddp is not None:
                ctx.average_gradients(model)  # the batches before ran under no_sync: nothing averaged them yet
        else:
            stats = _forward_backward(run, images, labels, cfg, cycle_end)
            nonfinite = (stats[4] > 0).to(stats.dtype)
            cycle_skip = nonfinite if cycle_skip is None else torch.maximum(cycle_skip, nonfinite)
            pending.append(_report(stats, progress.batch_in_epoch, cycle_end))
        if cycle_end and cycle_skip is not None:
            if cfg.clip_grad > 0:
                run.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            step_unless(optimizer, run.scaler, cycle_skip)
            optimizer.zero_grad(set_to_none=True)
            if bn_statistics is not None:  # before the EMA reads them (x 0 does not clear a NaN)
                bn_statistics.restore_if(cycle_skip)
            if run.ema is not None:
                run.ema.update_parameters(model, skip=cycle_skip)
            cycle_skip = None
        while len(pending) > 1:  # the batch before this one: done, or nearly, while this one is queued
            read(pending.popleft())
        if cfg.checkpoint_every and cycle_end and i + 1 < remaining:
            # A checkpoint holds the progress of every batch so far: read them all first. The count of
            # steps is known only then; the one before reading is an upper bound that moves one per cycle.
            if (progress.global_step + sum(r.cycle_end for r in pending)) % cfg.checkpoint_every == 0:
                while pending:
                    read(pending.popleft())
                if progress.global_step % cfg.checkpoint_every == 0 and progress.global_step != saved_at:
                    checkpoint()
                    saved_at = progress.global_step
    while pending:
        read(pending.popleft())
    seen = max(progress.seen, 1)
    return dict(train_loss=progress.loss_sum / seen, train_top1=100 * progress.correct1 / seen,
                train_top5=100 * progress.correct5 / seen,
                images_per_second=progress.trained / max(progress.seconds, 1e-9))


def _forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                      cycle_end: bool) -> torch.Tensor:
    """Forward and backward of one batch; its (5,) stats on the device, summed over the processes."""
    device = run.device
    images, labels = run.normalize(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)
    hard_labels = labels
    if run.mixer is not None:
        images, labels = run.mixer(images, labels)  # labels become (B, C) mixtures
        hard_labels = labels.argmax(1)
    if run.normalize.channels_last:  # the mixer, or a float batch, may come in another layout
        images = images.contiguous(memory_format=torch.channels_last)
    # Between accumulation steps the gradients only add up locally; the last backward of a cycle
    # all-reduces their sum.
    sync = contextlib.nullcontext() if run.ddp is None or cycle_end else run.ddp.no_sync()
    with sync:
        if run.cuda_graphs:  # a new training step: the graphs may reuse the last step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_context(device, run.amp):
            logits = run.step_model(images)
            loss = run.criterion(logits.float(), labels)
        if run.scaler.is_enabled():
            # The scaler skips a step by its gradients: make a non-finite loss give non-finite gradients
            # (with label smoothing or mixed targets an infinite logit gives an infinite loss and finite ones)
            loss = loss * torch.where(torch.isfinite(loss), 1.0, float("nan"))
        run.scaler.scale(loss / cfg.accum_steps).backward()
    loss = loss.detach()
    # n from a fill kernel, not from a Python number: torch.tensor(n, device=...) copies with a stream sync
    n = torch.full((1,), hard_labels.shape[0], dtype=loss.dtype, device=loss.device)
    stats = torch.cat([loss.reshape(1) * n, topk_hits(logits.detach().float(), hard_labels).to(loss.dtype), n,
                       (~torch.isfinite(loss)).to(loss.dtype).reshape(1)])
    return run.dist.sum_(stats)
