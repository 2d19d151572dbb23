"""`resnets.train`: data, model, loop, checkpoints and the run directory, in one readable function."""
from __future__ import annotations

import csv
import io
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..analysis.flops import check_img_size
from ..data.bad_files import BAD_FILES_CSV, BadFiles, SkipUnreadable, collate_skipping
from ..errors import ConfigError, ResnetsError
from ..fileio import atomic_write_json, atomic_write_text
from ..models import create_model, get_config
from ..models.weights import load_checkpoint, save_weights
from .checkpoint import (abandon_newer_states, find_resume, remove_stray_temp_files, rng_state, save_resume_state,
                         set_rng_state)
from .config import TrainConfig, make_config
from .loop import EvalResult, autocast_context, evaluate, topk_correct
from .optim import make_optimizer, make_scheduler
from .plots import plot_curves
from .sampling import EpochSampler, SeededItems

SUMMARY_FIELDS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "seconds"]


class TrainingError(ResnetsError):
    """The run cannot go on (e.g. the loss became NaN)."""


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    metrics: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_runtime(cfg: TrainConfig) -> tuple[torch.device, str, bool]:
    """Device, autocast mode and memory format: bf16 + channels_last on CUDA, plain fp32 on CPU."""
    from ..tasks.common import resolve_device

    device = resolve_device(None if cfg.device == "auto" else cfg.device)
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return device, amp, channels_last


def new_run_dir(cfg: TrainConfig) -> Path:
    base = Path(cfg.output)
    name = cfg.name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}"
    base.mkdir(parents=True, exist_ok=True)
    run_dir, k = base / name, 1
    while True:  # mkdir is the test: two runs started in the same second each get their own directory
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            run_dir, k = base / f"{name}-{k}", k + 1


def build_data(cfg: TrainConfig, data_cfg: dict[str, Any]):
    from ..data import eval_transform, load_splits, train_transform

    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                         train_transform=train_transform(data_cfg, cfg.img_size, hflip=cfg.hflip,
                                                         auto_augment=cfg.auto_augment,
                                                         random_erasing=cfg.random_erasing),
                         eval_transform=eval_transform(data_cfg, cfg.img_size), download=cfg.download)
    return splits


def make_loaders(cfg: TrainConfig, splits, device: torch.device) -> tuple[SkipUnreadable, SkipUnreadable, EpochSampler]:
    """Train and val loaders that skip unreadable files (shared `.bad_files` list), and the train sampler."""
    weights = None
    if cfg.imbalance == "sampler":
        counts = np.bincount(splits.train_labels, minlength=len(splits.class_names))
        weights = [1.0 / counts[y] for y in splits.train_labels]
    sampler = EpochSampler(len(splits.train), cfg.seed, weights)
    # An own generator: iterator creation must not draw from the global RNG, which a resumed run restores.
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                  generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate_skipping)
    train_loader = DataLoader(SeededItems(splits.train, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                              drop_last=len(splits.train) > cfg.batch_size, **common)
    val_loader = DataLoader(splits.val, batch_size=cfg.batch_size, shuffle=False, **common)
    bad_files = BadFiles(len(splits.train) + len(splits.val), cfg.max_bad_fraction)
    return SkipUnreadable(train_loader, bad_files, keep_empty=True), SkipUnreadable(val_loader, bad_files), sampler


def make_criterion(cfg: TrainConfig, splits, device: torch.device) -> nn.Module:
    weight = None
    if cfg.imbalance == "weights":
        counts = np.bincount(splits.train_labels, minlength=len(splits.class_names)).astype(np.float64)
        weight = torch.tensor(len(splits.train_labels) / (len(counts) * counts), dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def load_pretrained(model: nn.Module, cfg: TrainConfig, class_names: list[str]) -> None:
    """Fine-tuning weights into `model`. A head of the right size but trained on other classes (or in
    another order) would map each of them to a wrong label: an error, unless --remap-classes resets it."""
    from ..data.datasets import class_difference

    report = load_checkpoint(model, cfg.pretrained)
    saved = report.metadata.get("class_names")
    difference = (class_difference([str(n) for n in saved], class_names, ordered=True)
                  if isinstance(saved, list) and not report.skipped else None)
    if difference and not cfg.remap_classes:
        raise ConfigError(f"{cfg.pretrained} was trained on other classes than the data ({difference}); "
                          f"pass --remap-classes to fine-tune it with a new head")
    if difference:
        model.reset_classifier(len(class_names))
    model.class_names = list(class_names)  # load_checkpoint took the checkpoint's names
    print(f"{report}; head re-initialised for other classes ({difference})" if difference else report,
          file=sys.stderr)


def make_batch_mixer(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    mixers = []
    if cfg.mixup > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)


@dataclass
class Progress:
    """Where a run is: saved in every resume state, so a resumed run continues exactly."""

    epoch: int = 1
    batch_in_epoch: int = 0  # batches of `epoch` already trained
    global_step: int = 0  # optimizer steps
    best_top1: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0
    nonfinite_in_a_row: int = 0
    loss_sum: float = 0.0  # running totals of the current epoch
    correct1: int = 0
    correct5: int = 0
    seen: int = 0
    seconds: float = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0
        self.loss_sum, self.correct1, self.correct5, self.seen, self.seconds = 0.0, 0, 0, 0, 0.0


@dataclass
class Run:
    """The live objects of a training run, in one place for the loop and the resume state."""

    model: nn.Module
    step_model: nn.Module  # `model`, or its compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    criterion: nn.Module
    mixer: v2.Transform | None
    device: torch.device
    amp: str
    channels_last: bool
    batches_per_epoch: int


def train_one_epoch(run: Run, loader: DataLoader, cfg: TrainConfig, progress: Progress,
                    checkpoint: Callable[[], None]) -> dict[str, float]:
    """Train from `progress.batch_in_epoch` to the end of `progress.epoch`; `checkpoint()` every
    `cfg.checkpoint_every` optimizer steps."""
    model, optimizer, device = run.model, run.optimizer, run.device
    model.train()
    if cfg.freeze_backbone:  # frozen statistics too: BN layers of a frozen backbone stay in eval mode
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    start = time.perf_counter() - progress.seconds
    bar = tqdm(loader, desc=f"epoch {progress.epoch}/{cfg.epochs}", leave=False,
               disable=None if cfg.progress else True, dynamic_ncols=True, file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    for images, labels in bar:
        batch = progress.batch_in_epoch
        if not len(labels):  # every file of the batch was unreadable; it still counts, for resuming mid-epoch
            progress.batch_in_epoch += 1
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        hard_labels = labels
        if run.mixer is not None:
            images, labels = run.mixer(images, labels)  # labels become (B, C) mixtures
            hard_labels = labels.argmax(1)
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, run.amp):
            logits = run.step_model(images)
            loss = run.criterion(logits.float(), labels)
        progress.batch_in_epoch += 1
        if not torch.isfinite(loss):
            where = f"epoch {progress.epoch}, step {progress.global_step + 1} (batch {batch + 1})"
            if progress.nonfinite_in_a_row >= cfg.skip_nonfinite:
                raise TrainingError(f"loss became {loss.item()} at {where}; try a lower --lr, --clip-grad, "
                                    f"or --skip-nonfinite N")
            progress.nonfinite_in_a_row += 1
            print(f"warning: skipped a non-finite loss at {where} "
                  f"({progress.nonfinite_in_a_row} in a row, at most {cfg.skip_nonfinite})", file=sys.stderr)
            optimizer.zero_grad(set_to_none=True)
            continue
        progress.nonfinite_in_a_row = 0
        run.scaler.scale(loss / cfg.accum_steps).backward()
        if (batch + 1) % cfg.accum_steps == 0 or batch + 1 == run.batches_per_epoch:
            if cfg.clip_grad > 0:
                run.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            run.scaler.step(optimizer)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update_parameters(model)
            progress.global_step += 1
        n = hard_labels.shape[0]
        c1, c5 = topk_correct(logits.detach().float(), hard_labels)
        progress.loss_sum += loss.item() * n
        progress.correct1, progress.correct5, progress.seen = progress.correct1 + c1, progress.correct5 + c5, \
            progress.seen + n
        progress.seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.3f}",
                        top1=f"{100 * progress.correct1 / progress.seen:.1f}",
                        img_s=f"{progress.seen / progress.seconds:.0f}")
        at_step_end = (batch + 1) % cfg.accum_steps == 0
        if cfg.checkpoint_every and at_step_end and progress.global_step % cfg.checkpoint_every == 0 \
                and progress.batch_in_epoch < run.batches_per_epoch:
            checkpoint()
    seen = max(progress.seen, 1)
    return dict(train_loss=progress.loss_sum / seen, train_top1=100 * progress.correct1 / seen,
                train_top5=100 * progress.correct5 / seen, images_per_second=progress.seen / max(progress.seconds, 1e-9))


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_final_reports(run_dir: Path, result: EvalResult, class_names: list[str]) -> dict[str, Any]:
    from ..reports import write_class_reports

    rows, _ = write_class_reports(result.targets.tolist(), result.predictions.tolist(), class_names, run_dir)
    return {"per_class": rows}


def train(cfg: TrainConfig | None = None, **overrides: Any) -> RunResult:
    """Train a model as `resnets train` does; returns the run directory and its best top-1.

    Example: `resnets.train(model="resnet18", data_dir="photos/", epochs=20, lr=0.05)`.
    """
    defaults = TrainConfig()
    explicit = set(overrides) | ({k for k in TrainConfig.field_names() if getattr(cfg, k) != getattr(defaults, k)}
                                 if cfg else set())
    cfg = (dataclasses.replace(cfg, **overrides) if cfg else make_config(overrides)).resolved()
    resumed = None
    if cfg.resume:
        run_dir, resume_file, resumed = find_resume(cfg.resume, cfg.output)
        cfg = resumed_config(cfg, resumed, explicit)
        if resumed["progress"]["epoch"] > cfg.epochs:
            raise TrainingError(f"{run_dir} has already trained {resumed['progress']['epoch'] - 1} epochs; "
                                f"raise --epochs to train on")
    if cfg.deterministic:
        make_deterministic()
    seed_everything(cfg.seed)
    device, amp, channels_last = resolve_runtime(cfg)

    data_cfg = dict(get_config(cfg.model).data_config())
    if cfg.img_size:
        data_cfg["input_size"] = (data_cfg["input_size"][0], cfg.img_size, cfg.img_size)
    splits = build_data(cfg, data_cfg)
    num_classes = len(splits.class_names)
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ConfigError(f"--num-classes {cfg.num_classes} but the data has {num_classes} classes")

    model = create_model(cfg.model, num_classes=num_classes, drop_path_rate=cfg.drop_path_rate)
    check_img_size(model, data_cfg["input_size"][-1])
    if cfg.pretrained and resumed is None:
        load_pretrained(model, cfg, list(splits.class_names))
    # After loading: a checkpoint's own preprocessing and classes must not replace this run's.
    model.pretrained_cfg, model.class_names = data_cfg, list(splits.class_names)
    if cfg.freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    train_loader, val_loader, sampler = make_loaders(cfg, splits, device)
    batches_per_epoch = len(train_loader)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, math.ceil(batches_per_epoch / cfg.accum_steps), cfg)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    run = Run(model=model, step_model=torch.compile(model) if cfg.compile else model, optimizer=optimizer,
              scheduler=scheduler, scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"), ema=ema,
              criterion=make_criterion(cfg, splits, device), mixer=make_batch_mixer(cfg, num_classes),
              device=device, amp=amp, channels_last=channels_last, batches_per_epoch=batches_per_epoch)

    history: list[dict[str, Any]] = []
    progress = Progress()
    if resumed is not None:
        for stray in remove_stray_temp_files(run_dir):
            print(f"removed {stray.name}, left by an interrupted write", file=sys.stderr)
        for newer in abandon_newer_states(run_dir, resume_file):
            print(f"moved {newer.name} (newer than the state resumed from) to {newer.parent}", file=sys.stderr)
        restore(run, resumed)
        history, progress = list(resumed["history"]), Progress(**resumed["progress"])
        print(f"resuming {run_dir} from {resume_file.name}: epoch {progress.epoch}, batch "
              f"{progress.batch_in_epoch}/{batches_per_epoch}, step {progress.global_step}", file=sys.stderr)
    else:
        run_dir = new_run_dir(cfg)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
        {**cfg.to_dict(), "resolved_device": str(device), "resolved_amp": amp,
         "resolved_channels_last": channels_last}, sort_keys=False))
    bad_files = train_loader.bad_files
    bad_files.attach(run_dir / BAD_FILES_CSV)
    writer = _tensorboard(cfg, run_dir, model, device, data_cfg)
    print(f"{splits.description}; model {cfg.model} ({sum(p.numel() for p in model.parameters()):,} params) "
          f"on {device}, amp {amp}", file=sys.stderr)

    def checkpoint() -> None:
        save_resume_state(run_dir, resume_state(run, progress, history, cfg, splits.class_names),
                          keep=cfg.keep_checkpoints)

    eval_model = ema.module if ema is not None else model
    while progress.epoch <= cfg.epochs:
        epoch = progress.epoch
        sampler.set_epoch(epoch, start=progress.batch_in_epoch * cfg.batch_size)
        stats = train_one_epoch(run, train_loader, cfg, progress, checkpoint)
        t_eval = time.perf_counter()
        val = evaluate(eval_model, val_loader, device, amp, channels_last=channels_last)
        bad_files.report()
        row = dict(epoch=epoch, **stats, val_loss=val.loss, val_top1=val.top1, val_top5=val.top5,
                   lr=optimizer.param_groups[0]["lr"], seconds=progress.seconds + time.perf_counter() - t_eval)
        history.append(row)
        improved = val.top1 > progress.best_top1
        if improved:
            progress.best_top1, progress.best_epoch, progress.stale_epochs = val.top1, epoch, 0
            save_weights(eval_model, run_dir / "best.safetensors")
        else:
            progress.stale_epochs += 1
        save_weights(eval_model, run_dir / "last.safetensors")
        progress.start_epoch(epoch + 1)
        checkpoint()
        write_summary_csv(history, run_dir / "summary.csv")
        plot_curves(history, run_dir / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
        if writer is not None:
            for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
                writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
        print(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:6.2f}  "
              f"val loss {val.loss:.4f} top1 {val.top1:6.2f} top5 {val.top5:6.2f}  lr {row['lr']:.2e}  "
              f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s{'  *' if improved else ''}",
              file=sys.stderr)
        if cfg.patience and progress.stale_epochs >= cfg.patience:
            print(f"early stop: no better val top-1 for {progress.stale_epochs} epochs", file=sys.stderr)
            break
    if writer is not None:
        writer.close()

    # Final report of the best model (the weights users will ship), on the validation set.
    load_checkpoint(eval_model, run_dir / "best.safetensors")
    final = evaluate(eval_model, val_loader, device, amp, channels_last=channels_last)
    reports = write_final_reports(run_dir, final, list(splits.class_names))
    metrics = dict(best_top1=progress.best_top1, best_epoch=progress.best_epoch, best_top5=final.top5,
                   best_val_loss=final.loss, epochs_run=len(history), global_steps=progress.global_step,
                   num_classes=num_classes, class_names=list(splits.class_names), train_samples=len(splits.train),
                   val_samples=len(splits.val), model=cfg.model, device=str(device), amp=amp,
                   total_seconds=sum(r["seconds"] for r in history), unreadable_files=len(bad_files), **reports)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, progress.best_top1, progress.best_epoch, metrics)


# What a resumed run may change; every other option is the run's own (a changed lr or model would not be
# the same run any more).
RESUME_OVERRIDABLE = {"epochs", "resume", "output", "device", "workers", "progress", "checkpoint_every",
                      "keep_checkpoints", "log_tensorboard", "patience", "skip_nonfinite", "max_bad_fraction"}


def resumed_config(cfg: TrainConfig, state: dict[str, Any], explicit: set[str]) -> TrainConfig:
    """The saved run's options, with the explicitly given ones a resume may change; others are an error."""
    saved = make_config({k: v for k, v in state["config"].items() if k in TrainConfig.field_names()})
    conflicting = sorted(k for k in explicit - RESUME_OVERRIDABLE if getattr(cfg, k) != getattr(saved, k))
    if conflicting:
        raise ConfigError(f"--resume continues a run with its own options; these differ from it: "
                          f"{', '.join(conflicting)} (only {', '.join(sorted(RESUME_OVERRIDABLE - {'resume'}))} "
                          f"may change)")
    keep = {k: getattr(cfg, k) for k in (explicit & RESUME_OVERRIDABLE) | {"resume", "output"}}
    return dataclasses.replace(saved, **keep).resolved()


def make_deterministic() -> None:
    """Bitwise-repeatable runs: deterministic kernels only (cuBLAS needs its workspace pinned for that)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def resume_state(run: Run, progress: Progress, history: list[dict[str, Any]], cfg: TrainConfig,
                 class_names: list[str]) -> dict[str, Any]:
    return dict(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
                ema=run.ema.state_dict() if run.ema is not None else None, epoch=progress.epoch,
                batch_in_epoch=progress.batch_in_epoch, global_step=progress.global_step,
                progress=dataclasses.asdict(progress), history=history, config=cfg.to_dict(),
                class_names=list(class_names), rng=rng_state())


def restore(run: Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])


def _tensorboard(cfg: TrainConfig, run_dir: Path, model: nn.Module, device: torch.device, data_cfg: dict[str, Any]):
    if not cfg.log_tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--log-tensorboard needs the tensorboard package: pip install 'resnets[tensorboard]'") from None
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    example = torch.zeros((1, *data_cfg["input_size"]), device=device)
    was_training = model.training
    writer.add_graph(model.eval(), example)
    model.train(was_training)
    return writer
