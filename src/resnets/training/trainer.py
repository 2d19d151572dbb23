"""`resnets.train`: build the run (`run.py`), then `fit` it: an epoch, a validation, the run folder's files,
until the last epoch or early stopping; then the final report of the best weights.

The same code runs alone or as one of several processes under torchrun (see distributed.py).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.bad_files import Unreadable
from ..errors import DataError
from ..evaluation import EvalResult, evaluate, merge_results
from ..fileio import check_writable
from ..models.weights import load_weights
from ..per_image import evaluated_items
from .config import TrainConfig, make_config
from .distributed import init_distributed
from .epoch import train_one_epoch
from .optim import head_lr
from .run import Run, build_run
from .run_dir import BEST
from .stopping import StopRequest


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    metrics: dict[str, Any]


def train(cfg: TrainConfig | None = None, **overrides: Any) -> RunResult:
    """Train a model as `resnets train` does; returns the run folder and its best top-1.

    Example: `resnets.train(model="resnet18", data_dir="photos/", epochs=20, lr=0.05)`. Under
    `torchrun --nproc_per_node N -m resnets train ...` each process calls this and trains its share.
    Like torchvision's and timm's training scripts it sets process-wide switches, and leaves them set:
    `torch.backends.cudnn.benchmark` (on; off with `deterministic=True`, which also turns on
    `torch.use_deterministic_algorithms`).
    """
    # The options a resume applies are the given ones: every keyword (the CLI passes exactly the flags and
    # YAML keys the user wrote), and of a TrainConfig, which cannot tell a default the user repeated from
    # one left alone, the fields that differ from the defaults.
    defaults = TrainConfig()
    explicit = set(overrides) | ({k for k in TrainConfig.field_names() if getattr(cfg, k) != getattr(defaults, k)}
                                 if cfg else set())
    cfg = (dataclasses.replace(cfg, **overrides) if cfg else make_config(overrides)).resolved()
    check_writable(cfg.output, "--output", folder=True)  # now, not after loading the data and the model
    ctx, device = init_distributed(cfg.device, cfg.dist_timeout)
    with StopRequest().installed() as stop:
        run = build_run(cfg, explicit, ctx, device, stop)
        try:
            result = fit(run)
        finally:
            run.run_dir.release()
    # Only on success: after an error a peer may still sit in a collective, and the process exit (which
    # torchrun turns into ending the whole job) is the way out.
    ctx.close()
    return result


def fit(run: Run) -> RunResult:
    """Train epochs until the last one (or early stopping), then report on the best weights."""
    cfg, progress = run.cfg, run.progress
    run.stop.armed = True  # from here on a signal saves the run where it is
    while progress.epoch <= cfg.epochs and not run.stopped_early():
        if run.stop_due():  # a signal during the build, a validation or the last step of an epoch
            run.stop_here()
        epoch = progress.epoch
        run.sampler.set_epoch(epoch, start=progress.samples_in_epoch)
        stats = train_one_epoch(run.step, run.train_loader, cfg, progress, run.save_checkpoint, run.batches_per_epoch,
                                stop=run.stop_due)
        if run.stop_signum:
            run.stop_here()
        t_eval = time.perf_counter()
        val = validate(run)
        row = dict(epoch=epoch, **stats, val_loss=val.loss, val_top1=val.top1, val_top5=val.top5,
                   lr=head_lr(run.step.optimizer), seconds=progress.seconds + time.perf_counter() - t_eval)
        improved = end_epoch(run, row)
        run.say(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:6.2f}  "
                f"val loss {val.loss:.4f} top1 {val.top1:6.2f} top5 {val.top5:6.2f}  lr {row['lr']:.2e}  "
                f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s{'  *' if improved else ''}")
        if run.stopped_early():
            run.say(f"early stop: no better val top-1 for {progress.stale_epochs} epochs")
    run.run_dir.close()
    return finish(run)


def validate(run: Run) -> EvalResult:
    """The epoch's validation, the same on every process; unreadable files found so far are united and
    reported, and every class must keep a readable training image."""
    step, ctx = run.step, run.ctx
    for module in {id(m): m for m in (step.model, step.eval_model)}.values():
        ctx.average_buffers(module)
    result = evaluate_shards(run)
    share_bad_files(run)
    if len(run.bad_files) != run.classes_checked_at:  # a scan of every sample: only when new broken files turned up
        require_every_class(run)
        run.classes_checked_at = len(run.bad_files)
    return result


def share_bad_files(run: Run) -> None:
    """Unite the processes' lists of unreadable files, stop together past the limit, report once."""
    bad_files, ctx = run.bad_files, run.ctx
    if ctx.enabled:  # add() checks the limit on the united list: every process raises or none does
        bad_files.add(Unreadable(file, reason) for reasons in ctx.gather(dict(bad_files.reasons))
                      for file, reason in reasons.items())
    if ctx.is_main:
        bad_files.report()


def evaluate_shards(run: Run, keep_losses: bool = False) -> EvalResult:
    """Every process evaluates its shard; the parts add up to one result on every process."""
    step = run.step
    part = evaluate(step.eval_model, run.val_loader, step.device, step.amp, normalize=step.normalize,
                    allow_empty=True, keep_losses=keep_losses)
    result = merge_results(run.ctx.gather(part)) if run.ctx.enabled else part
    if result.num_samples == 0:
        raise ValueError("evaluation set is empty")
    return result


def require_every_class(run: Run) -> None:
    """A class whose every training file is unreadable would train to be never predicted, silently when
    it is smaller than --max-bad-fraction: an error naming it (the files are in bad_files.csv by now)."""
    splits, bad_files = run.splits, run.bad_files
    samples = getattr(splits.train, "samples", None)
    if samples is None or not bad_files.reasons:
        return
    readable = np.bincount([label for path, label in samples if str(path) not in bad_files.reasons],
                           minlength=len(splits.class_names))
    empty = [name for name, count in zip(splits.class_names, readable) if count == 0]
    if empty:
        where = f" (listed in {bad_files.csv_path})" if bad_files.csv_path else ""
        raise DataError(f"every training image of class {', '.join(map(repr, empty))} is unreadable{where}; "
                        f"the model cannot learn it: fix or remove those files")


def end_epoch(run: Run, row: dict[str, Any]) -> bool:
    """Record the epoch: best so far or not, weights, a checkpoint at the next epoch's start, the summary.
    Returns whether val top-1 improved."""
    progress = run.progress
    run.history.append(row)
    improved = row["val_top1"] > progress.best_top1
    if improved:
        progress.best_top1, progress.best_epoch, progress.stale_epochs = row["val_top1"], row["epoch"], 0
    else:
        progress.stale_epochs += 1
    if run.ctx.is_main:
        run.run_dir.save_weights(run.step.eval_model, best=improved)
    progress.start_epoch(row["epoch"] + 1)
    run.save_checkpoint()
    if run.ctx.is_main:
        run.run_dir.write_epoch(run.history, title=f"{run.cfg.model} on {run.cfg.dataset}")
    return improved


def finish(run: Run) -> RunResult:
    """The final report of the best model (the weights users will ship), on the validation set. Rank 0 has the
    file; the others get its weights over the wire (their disks may not share the run folder)."""
    step, ctx, progress = run.step, run.ctx, run.progress
    if ctx.is_main:
        load_weights(step.eval_model, run.run_dir.path / BEST)
    ctx.broadcast_module(step.eval_model)
    final = evaluate_shards(run, keep_losses=True)  # 8 bytes an image more: predictions.csv and the top losses
    class_names = list(run.splits.class_names)
    metrics = dict(best_top1=progress.best_top1, best_epoch=progress.best_epoch, best_top5=final.top5,
                   best_val_loss=final.loss, epochs_run=len(run.history), global_steps=progress.global_step,
                   num_classes=len(class_names), class_names=class_names, train_samples=len(run.splits.train),
                   val_samples=final.num_samples, model=run.cfg.model, device=str(step.device), amp=step.amp,
                   world_size=ctx.world_size, total_seconds=sum(r["seconds"] for r in run.history),
                   unreadable_files=len(run.bad_files))
    if ctx.is_main:
        items = evaluated_items(run.splits.val, skipped=run.bad_files.reasons, world_size=ctx.world_size)
        metrics = run.run_dir.write_report(metrics, final, class_names, items,
                                           title=f"{run.cfg.model} on {run.cfg.dataset}")
    return RunResult(run.run_dir.path, progress.best_top1, progress.best_epoch, metrics)
