"""`resnets.train`: data, model, loop, checkpoints and the run directory, in one readable function."""
from __future__ import annotations

import csv
import io
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from ..analysis.flops import check_img_size
from ..errors import ConfigError, ResnetsError
from ..fileio import atomic_write_json, atomic_write_text
from ..models import create_model, get_config
from ..models.weights import load_checkpoint, save_weights
from .checkpoint import RESUME_FILE, load_resume_state, rng_state, save_resume_state, set_rng_state
from .config import TrainConfig, make_config
from .loop import EvalResult, autocast_context, evaluate, topk_correct
from .optim import make_optimizer, make_scheduler
from .plots import plot_curves

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
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise ConfigError(f"device={cfg.device!r} is not a device (cpu, cuda, cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda asked for, but no CUDA GPU is available here")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return device, amp, channels_last


def new_run_dir(cfg: TrainConfig) -> Path:
    base = Path(cfg.output)
    name = cfg.name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}"
    run_dir, k = base / name, 1
    while run_dir.exists():
        run_dir, k = base / f"{name}-{k}", k + 1
    run_dir.mkdir(parents=True)
    return run_dir


def build_data(cfg: TrainConfig, data_cfg: dict[str, Any]):
    from ..data import eval_transform, load_splits, train_transform

    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                         train_transform=train_transform(data_cfg, cfg.img_size, hflip=cfg.hflip,
                                                         auto_augment=cfg.auto_augment,
                                                         random_erasing=cfg.random_erasing),
                         eval_transform=eval_transform(data_cfg, cfg.img_size), download=cfg.download)
    return splits


def make_loaders(cfg: TrainConfig, splits, device: torch.device) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if cfg.imbalance == "sampler":
        counts = np.bincount(splits.train_labels, minlength=len(splits.class_names))
        weights = [1.0 / counts[y] for y in splits.train_labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), generator=generator)
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    train_loader = DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=generator, drop_last=len(splits.train) > cfg.batch_size, **common)
    val_loader = DataLoader(splits.val, batch_size=cfg.batch_size, shuffle=False, **common)
    return train_loader, val_loader


def make_criterion(cfg: TrainConfig, splits, device: torch.device) -> nn.Module:
    weight = None
    if cfg.imbalance == "weights":
        counts = np.bincount(splits.train_labels, minlength=len(splits.class_names)).astype(np.float64)
        weight = torch.tensor(len(splits.train_labels) / (len(counts) * counts), dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def make_batch_mixer(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    mixers = []
    if cfg.mixup > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, device: torch.device, cfg: TrainConfig, epoch: int, amp: str, channels_last: bool,
                    scaler: torch.amp.GradScaler, ema: nn.Module | None, mixer: v2.Transform | None,
                    frozen_backbone: bool, step_model: nn.Module) -> dict[str, float]:
    model.train()
    if frozen_backbone:  # frozen statistics too: BN layers of a frozen backbone stay in eval mode
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    total_loss, correct1, correct5, seen, start = 0.0, 0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if cfg.progress else True,
               dynamic_ncols=True, file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        hard_labels = labels
        if mixer is not None:
            images, labels = mixer(images, labels)  # labels become (B, C) mixtures
            hard_labels = labels.argmax(1)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            logits = step_model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {i + 1}; "
                                f"try a lower --lr or --clip-grad")
        scaler.scale(loss / cfg.accum_steps).backward()
        if (i + 1) % cfg.accum_steps == 0 or i + 1 == len(loader):
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        n = hard_labels.shape[0]
        c1, c5 = topk_correct(logits.detach().float(), hard_labels)
        total_loss, correct1, correct5, seen = total_loss + loss.item() * n, correct1 + c1, correct5 + c5, seen + n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", top1=f"{100 * correct1 / seen:.1f}",
                        img_s=f"{seen / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    return dict(train_loss=total_loss / max(seen, 1), train_top1=100 * correct1 / max(seen, 1),
                train_top5=100 * correct5 / max(seen, 1), images_per_second=seen / seconds)


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_final_reports(run_dir: Path, result: EvalResult, class_names: list[str]) -> dict[str, Any]:
    from ..reports import (classification_report, confusion_matrix, plot_confusion_matrix, write_confusion_csv,
                           write_report_csv)

    rows = classification_report(result.targets.tolist(), result.predictions.tolist(), class_names)
    write_report_csv(rows, run_dir / "per_class.csv")
    cm = confusion_matrix(result.targets.tolist(), result.predictions.tolist(), len(class_names))
    write_confusion_csv(cm, class_names, run_dir / "confusion_matrix.csv")
    plot_confusion_matrix(cm, class_names, run_dir / "confusion_matrix.png")
    return {"per_class": rows}


def train(cfg: TrainConfig | None = None, **overrides: Any) -> RunResult:
    """Train a model as `resnets train` does; returns the run directory and its best top-1.

    Example: `resnets.train(model="resnet18", data_dir="photos/", epochs=20, lr=0.05)`.
    """
    cfg = (dataclasses.replace(cfg, **overrides) if cfg else make_config(overrides)).resolved()
    resume = load_resume_state(cfg.resume) if cfg.resume else None
    if resume is not None:  # the run's own options win, except how long to train and where it runs
        saved = make_config({k: v for k, v in resume["config"].items() if k in {f.name for f in
                                                                                 dataclasses.fields(TrainConfig)}})
        cfg = dataclasses.replace(saved, epochs=cfg.epochs, resume=cfg.resume, device=cfg.device,
                                  workers=cfg.workers, progress=cfg.progress).resolved()
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
    model.pretrained_cfg, model.class_names = data_cfg, list(splits.class_names)
    if cfg.pretrained and resume is None:
        report = load_checkpoint(model, cfg.pretrained)
        print(report, file=sys.stderr)
    if cfg.freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    train_loader, val_loader = make_loaders(cfg, splits, device)
    criterion = make_criterion(cfg, splits, device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = make_scheduler(optimizer, steps_per_epoch, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    step_model = torch.compile(model) if cfg.compile else model
    mixer = make_batch_mixer(cfg, num_classes)

    history: list[dict[str, Any]] = []
    start_epoch, best_top1, best_epoch = 1, -1.0, 0
    if resume is not None:
        run_dir = Path(cfg.resume) if Path(cfg.resume).is_dir() else Path(cfg.resume).parent
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if ema is not None and resume.get("ema"):
            ema.load_state_dict(resume["ema"])
        history, start_epoch = list(resume["history"]), int(resume["epoch"]) + 1
        best_top1, best_epoch = float(resume["best_top1"]), int(resume["best_epoch"])
        set_rng_state(resume["rng"])
        print(f"resuming {run_dir} after epoch {start_epoch - 1}", file=sys.stderr)
    else:
        run_dir = new_run_dir(cfg)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
        {**cfg.to_dict(), "resolved_device": str(device), "resolved_amp": amp,
         "resolved_channels_last": channels_last}, sort_keys=False))
    writer = _tensorboard(cfg, run_dir, model, device, data_cfg)
    print(f"{splits.description}; model {cfg.model} ({sum(p.numel() for p in model.parameters()):,} params) "
          f"on {device}, amp {amp}", file=sys.stderr)

    eval_model = ema.module if ema is not None else model
    stale = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        stats = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, device, cfg, epoch, amp,
                                channels_last, scaler, ema, mixer, cfg.freeze_backbone, step_model)
        val = evaluate(eval_model, val_loader, device, amp, channels_last=channels_last)
        row = dict(epoch=epoch, **stats, val_loss=val.loss, val_top1=val.top1, val_top5=val.top5,
                   lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        improved = val.top1 > best_top1
        if improved:
            best_top1, best_epoch, stale = val.top1, epoch, 0
            save_weights(eval_model, run_dir / "best.safetensors")
        else:
            stale += 1
        save_weights(eval_model, run_dir / "last.safetensors")
        save_resume_state(run_dir / RESUME_FILE, dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), ema=ema.state_dict() if ema is not None else None, epoch=epoch,
            best_top1=best_top1, best_epoch=best_epoch, history=history, config=cfg.to_dict(),
            class_names=list(splits.class_names), rng=rng_state()))
        write_summary_csv(history, run_dir / "summary.csv")
        plot_curves(history, run_dir / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
        if writer is not None:
            for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
                writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
        print(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:6.2f}  "
              f"val loss {val.loss:.4f} top1 {val.top1:6.2f} top5 {val.top5:6.2f}  lr {row['lr']:.2e}  "
              f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s{'  *' if improved else ''}",
              file=sys.stderr)
        if cfg.patience and stale >= cfg.patience:
            print(f"early stop: no better val top-1 for {stale} epochs", file=sys.stderr)
            break
    if writer is not None:
        writer.close()

    # Final report of the best model (the weights users will ship), on the validation set.
    load_checkpoint(eval_model, run_dir / "best.safetensors")
    final = evaluate(eval_model, val_loader, device, amp, channels_last=channels_last)
    reports = write_final_reports(run_dir, final, list(splits.class_names))
    metrics = dict(best_top1=best_top1, best_epoch=best_epoch, best_top5=final.top5, best_val_loss=final.loss,
                   epochs_run=len(history), num_classes=num_classes, class_names=list(splits.class_names),
                   train_samples=len(splits.train), val_samples=len(splits.val), model=cfg.model,
                   device=str(device), amp=amp, total_seconds=sum(r["seconds"] for r in history), **reports)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, best_top1, best_epoch, metrics)


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
