"""One epoch of training: batches through the step, accumulation cycles, the non-finite guard, running metrics."""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from ..errors import TrainingError
from ..messages import warn
from .config import TrainConfig
from .distributed import Distributed
from .finetune import head_only, set_trainable
from .optim import lr_factor, set_lr
from .step import BatchNormStatistics, TrainStep


@dataclass
class Progress:
    """Where a run is: saved in every checkpoint, so a resumed run continues exactly."""

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

    def epoch_stats(self) -> dict[str, float]:
        seen = max(self.seen, 1)
        return dict(train_loss=self.loss_sum / seen, train_top1=100 * self.correct1 / seen,
                    train_top5=100 * self.correct5 / seen, images_per_second=self.trained / max(self.seconds, 1e-9))


@dataclass
class StepReport:
    """What one batch tells the host: loss x n, top-1 and top-5 hits, n, non-finite flag (summed over the
    processes), copied without waiting; `ready` says when the copy has landed (None: it is there)."""

    stats: torch.Tensor | None  # None: a batch no process had a readable image of
    ready: torch.cuda.Event | None
    batch_in_epoch: int
    cycle_end: bool  # the last batch of an accumulation cycle: its optimizer step follows it

    @classmethod
    def of(cls, stats: torch.Tensor, batch_in_epoch: int, cycle_end: bool) -> "StepReport":
        if stats.device.type != "cuda":
            return cls(stats.cpu(), None, batch_in_epoch, cycle_end)
        host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(host, ready, batch_in_epoch, cycle_end)

    def values(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.stats.tolist()  # type: ignore[union-attr]


class StepAccounting:
    """Batch reports as they reach the host (one batch late, in order), counted into `progress` once their
    cycle's step is known to be taken; a skipped step's batches count only as time spent. Stops the run past
    `limit` skipped steps in a row (--skip-nonfinite)."""

    def __init__(self, progress: Progress, limit: int, world_size: int, is_main: bool):
        self.progress, self.limit, self.world_size, self.is_main = progress, limit, world_size, is_main
        self.pending: deque[StepReport] = deque()
        self.saved_at = progress.global_step  # the step last checkpointed: the state the epoch started from is saved
        self._new_cycle()

    def _new_cycle(self) -> None:
        self.batches, self.sums, self.nonfinite_at, self.bad_loss = 0, [0.0, 0.0, 0.0, 0.0], "", "non-finite"

    def add(self, report: StepReport) -> None:
        """A batch's report, queued: it is read once the next batch's work is queued behind it."""
        self.pending.append(report)

    def read(self, keep: int = 0) -> None:
        """Count every pending report but the newest `keep` (those may still be on their way)."""
        while len(self.pending) > keep:
            report = self.pending.popleft()
            if report.stats is not None:
                self._add(report)
            if report.cycle_end:
                self._end_cycle()

    def _add(self, report: StepReport) -> None:
        loss_sum, c1, c5, seen, nonfinite = report.values()
        progress = self.progress
        self.batches += 1
        if nonfinite and not self.nonfinite_at:  # on any process: the averaged gradients are poisoned
            self.nonfinite_at = (f"epoch {progress.epoch}, step {progress.global_step + 1} "
                                 f"(batch {report.batch_in_epoch})")
            self.bad_loss = loss_sum / seen if self.world_size == 1 and seen else "non-finite"
        self.sums = [a + b for a, b in zip(self.sums, (loss_sum, c1, c5, seen))]
        progress.trained += int(seen)

    def _end_cycle(self) -> None:
        progress = self.progress
        if self.nonfinite_at:  # the step was skipped on the device; the limit counts skipped steps in a row
            if progress.nonfinite_in_a_row >= self.limit:
                raise TrainingError(f"loss became {self.bad_loss} at {self.nonfinite_at}; try a lower --lr, "
                                    f"--clip-grad, or --skip-nonfinite N")
            progress.nonfinite_in_a_row += 1
            if self.is_main:
                warn(f"skipped a non-finite loss at {self.nonfinite_at} "
                     f"({progress.nonfinite_in_a_row} in a row, at most {self.limit})")
        elif self.batches:
            progress.nonfinite_in_a_row = 0
            progress.global_step += 1
            loss_sum, c1, c5, seen = self.sums
            progress.loss_sum += loss_sum
            progress.correct1, progress.correct5 = progress.correct1 + int(c1), progress.correct5 + int(c5)
            progress.seen += int(seen)
        self._new_cycle()

    def claim_checkpoint(self, every: int) -> bool:
        """True, once, when the step just queued is a multiple of `every` (--checkpoint-every): the caller then
        writes its checkpoint. A checkpoint holds the progress of every batch so far, so they are all read first;
        the count of steps is known only then. Until then it is bounded above by the steps pending, a bound that
        moves one per cycle."""
        if (self.progress.global_step + sum(r.cycle_end for r in self.pending)) % every:
            return False
        self.read()
        due = self.progress.global_step % every == 0 and self.progress.global_step != self.saved_at
        if due:
            self.saved_at = self.progress.global_step
        return due


def empty_batch_rule(loader: Iterable, ctx: Distributed) -> Callable[[torch.Tensor], bool]:
    """Whether a batch (its labels) has no readable image in some process: every process then skips it together,
    since one process alone leaving the step would stall DDP's all-reduce. Only a loader of files can hand out
    such a batch; agreeing on it costs every step a host-side exchange, which the GPU-resident store does without."""
    if not getattr(loader, "yields_empty_batches", True):
        return lambda labels: False
    return lambda labels: ctx.any(not len(labels))


def train_one_epoch(step: TrainStep, loader: Iterable, cfg: TrainConfig, progress: Progress,
                    checkpoint: Callable[[], None], batches_per_epoch: int,
                    stop: Callable[[int], bool] | None = None) -> dict[str, float]:
    """Train from `progress.samples_in_epoch` to the end of `progress.epoch`; `checkpoint()` every
    `cfg.checkpoint_every` optimizer steps. `loader` yields this process's share of the rest of the epoch,
    `batches_per_epoch` is its share of a whole epoch (the lr schedule's clock). `stop(cycle)`, asked after
    each accumulation cycle but the epoch's last, ends the epoch there when it says so (the caller saves).

    No host sync per step: the non-finite guard skips a step on the device (`step_unless`), and each
    batch's numbers reach the host one batch late, read once the next batch's work is queued, so the GPU
    always has a step to run while the host waits. A non-finite loss skips its whole accumulation cycle."""
    ctx = step.dist
    set_trainable(step.model, head_only(cfg, progress.epoch))  # --freeze-backbone, --head-epochs
    # Only a run that survives a non-finite step needs its BN statistics guarded; without --skip-nonfinite
    # it stops there.
    bn_statistics = BatchNormStatistics(step.model) if cfg.skip_nonfinite else None
    accounting = StepAccounting(progress, cfg.skip_nonfinite, ctx.world_size, ctx.is_main)
    start = time.perf_counter() - progress.seconds
    remaining = len(loader)  # type: ignore[arg-type]
    bar = tqdm(loader, desc=f"epoch {progress.epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=None if cfg.progress and ctx.is_main else True, file=sys.stderr)
    cycle_skip: torch.Tensor | None = None  # device flag: a batch of this accumulation cycle was non-finite
    global_batch = cfg.batch_size * ctx.world_size
    empty_somewhere = empty_batch_rule(loader, ctx)
    step.optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(bar):
        if i % cfg.accum_steps == 0:  # the rate of the coming step, from the progress before it
            set_lr(step.optimizer, step.base_lr, lr_factor(epochs_done(progress, batches_per_epoch, global_batch), cfg))
            if bn_statistics is not None:
                bn_statistics.save()
        progress.batch_in_epoch += 1
        progress.samples_in_epoch += global_batch
        cycle_end = (i + 1) % cfg.accum_steps == 0 or i + 1 == remaining
        # Every file of the batch was unreadable: the batch still counts (for resuming mid-epoch) and is
        # skipped by every process, since one process alone leaving the step would stall DDP's all-reduce.
        if empty_somewhere(labels):
            accounting.add(StepReport(None, None, progress.batch_in_epoch, cycle_end))
            if cycle_end and cycle_skip is not None and step.ddp is not None:
                ctx.average_gradients(step.model)  # the batches before ran under no_sync: nothing averaged them
        else:
            stats = step.forward_backward(images, labels, cycle_end)
            nonfinite = (stats[4] > 0).to(stats.dtype)
            cycle_skip = nonfinite if cycle_skip is None else torch.maximum(cycle_skip, nonfinite)
            accounting.add(StepReport.of(stats, progress.batch_in_epoch, cycle_end))
        if cycle_end and cycle_skip is not None:
            step.optimizer_step(cycle_skip, bn_statistics)
            cycle_skip = None
        accounting.read(keep=1)  # the batch before this one: done, or nearly, while this one is queued
        _show(bar, progress, start)
        mid_epoch = cycle_end and i + 1 < remaining  # the epoch's end has a checkpoint of its own
        if cfg.checkpoint_every and mid_epoch and accounting.claim_checkpoint(cfg.checkpoint_every):
            checkpoint()
        if mid_epoch and stop is not None and stop(progress.batch_in_epoch // cfg.accum_steps):
            break
    accounting.read()
    _show(bar, progress, start)
    return progress.epoch_stats()


def epochs_done(progress: Progress, batches_per_epoch: int, global_batch: int) -> float:
    """Training progress in (fractional) epochs, the clock of the lr schedule."""
    samples_per_epoch = max(batches_per_epoch * global_batch, 1)
    return progress.epoch - 1 + min(progress.samples_in_epoch / samples_per_epoch, 1.0)


def _show(bar: tqdm, progress: Progress, start: float) -> None:
    progress.seconds = time.perf_counter() - start
    if progress.seen:
        bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.3f}",
                        top1=f"{100 * progress.correct1 / progress.seen:.1f}",
                        img_s=f"{progress.trained / progress.seconds:.0f}")
