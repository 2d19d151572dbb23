"""One epoch of training: the optimizer step, gradient accumulation, the non-finite guard, running metrics."""
from __future__ import annotations

import contextlib
import sys
import time
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
from .optim import lr_factor, set_lr


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
    seen: int = 0
    seconds: float = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.samples_in_epoch, self.batch_in_epoch = epoch, 0, 0
        self.loss_sum, self.correct1, self.correct5, self.seen, self.seconds = 0.0, 0, 0, 0, 0.0


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


def train_one_epoch(run: Run, loader: Iterable, cfg: TrainConfig, progress: Progress,
                    checkpoint: Callable[[], None]) -> dict[str, float]:
    """Train from `progress.samples_in_epoch` to the end of `progress.epoch`; `checkpoint()` every
    `cfg.checkpoint_every` optimizer steps. `loader` yields this process's share of the rest of the epoch."""
    model, optimizer, device, ctx = run.model, run.optimizer, run.device, run.dist
    model.train()
    if cfg.freeze_backbone:  # frozen statistics too: BN layers of a frozen backbone stay in eval mode
        _freeze_bn_statistics(model)
    start = time.perf_counter() - progress.seconds
    remaining = len(loader)  # type: ignore[arg-type]
    bar = tqdm(loader, desc=f"epoch {progress.epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=None if cfg.progress and ctx.is_main else True, file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(bar):
        if i % cfg.accum_steps == 0:  # the rate of the coming step, from the progress before it
            set_lr(optimizer, run.base_lr, lr_factor(run.epochs_done(progress), cfg))
        progress.batch_in_epoch += 1
        progress.samples_in_epoch += run.global_batch
        cycle_end = (i + 1) % cfg.accum_steps == 0 or i + 1 == remaining
        # Every file of the batch was unreadable: the batch still counts (for resuming mid-epoch) and is
        # skipped by every process, since one process alone leaving the step would stall DDP's all-reduce.
        if ctx.any(not len(labels)):
            continue
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
            run.scaler.scale(loss / cfg.accum_steps).backward()
        # The step's one host sync: loss, hits, count and a non-finite flag, summed over processes.
        n = hard_labels.shape[0]
        loss = loss.detach()
        stats = torch.cat([(loss * n).reshape(1), topk_hits(logits.detach().float(), hard_labels).to(loss.dtype),
                           torch.stack([loss.new_tensor(n), (~torch.isfinite(loss)).to(loss.dtype)])])
        loss_sum, c1, c5, seen, nonfinite = ctx.sum_(stats).tolist()
        if nonfinite:  # on any process: the gradients averaged with it are poisoned on every process
            optimizer.zero_grad(set_to_none=True)
            where = f"epoch {progress.epoch}, step {progress.global_step + 1} (batch {progress.batch_in_epoch})"
            if progress.nonfinite_in_a_row >= cfg.skip_nonfinite:
                raise TrainingError(f"loss became {loss.item() if ctx.world_size == 1 else 'non-finite'} at "
                                    f"{where}; try a lower --lr, --clip-grad, or --skip-nonfinite N")
            progress.nonfinite_in_a_row += 1
            if ctx.is_main:
                print(f"warning: skipped a non-finite loss at {where} "
                      f"({progress.nonfinite_in_a_row} in a row, at most {cfg.skip_nonfinite})", file=sys.stderr)
            continue
        progress.nonfinite_in_a_row = 0
        if cycle_end:
            if cfg.clip_grad > 0:
                run.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            run.scaler.step(optimizer)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if run.ema is not None:
                run.ema.update_parameters(model)
            progress.global_step += 1
        progress.loss_sum += loss_sum
        progress.correct1, progress.correct5 = progress.correct1 + int(c1), progress.correct5 + int(c5)
        progress.seen += int(seen)
        progress.seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.3f}",
                        top1=f"{100 * progress.correct1 / progress.seen:.1f}",
                        img_s=f"{progress.seen / progress.seconds:.0f}")
        if cfg.checkpoint_every and cycle_end and progress.global_step % cfg.checkpoint_every == 0 \
                and i + 1 < remaining:
            checkpoint()
    seen = max(progress.seen, 1)
    return dict(train_loss=progress.loss_sum / seen, train_top1=100 * progress.correct1 / seen,
                train_top5=100 * progress.correct5 / seen, images_per_second=progress.seen / max(progress.seconds, 1e-9))
