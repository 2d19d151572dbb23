"""`resnets.train`: data, model, loop, checkpoints and the run directory, in one readable function.

The same function runs alone or as one of several processes under torchrun (see distributed.py).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..analysis.flops import check_img_size
from ..caches import CUDA_GRAPH_MODES, compile_mode_arg, keep_compile_cache
from ..data.bad_files import BAD_FILES_CSV, BadFiles, SkipUnreadable, Unreadable, collate_skipping
from ..data.device_decode import DeviceDecodeLoader, EncodedFiles, collate_encoded
from ..data.resident import DeviceAugment, DeviceLoader, ImageStore, cached_store, store_size
from ..data.images import DataError
from ..data.transforms import DeviceNormalize, image_size
from ..errors import ConfigError
from ..fileio import atomic_copy, atomic_write_json, atomic_write_text, check_writable
from ..models import create_model, get_config
from ..models.weights import load_checkpoint, save_weights
from .checkpoint import (abandon_newer_states, find_resume, load_resume_state, remove_stray_temp_files, rng_state,
                         save_resume_state, seed_everything)
from .config import TrainConfig, default_workers, make_config
from .distributed import (Distributed, convert_sync_bn, elastic_restart_count, elastic_run_id, init_distributed,
                          wrap_model)
from .ema import ModelEma
from .loop import EvalResult, evaluate, merge_results
from .optim import make_optimizer, scaled_lr
from .plots import plot_curves
from .resume import elastic_restart_target, restore, resume_state, resumed_config
from .sampling import EpochSampler, SeededItems
from .steps import Progress, Run, TrainingError, train_one_epoch  # noqa: F401  (TrainingError: public here)

SUMMARY_FIELDS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "seconds"]


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    metrics: dict[str, Any]


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple[str, bool]:
    """Autocast mode and memory format: bf16 + channels_last on CUDA, plain fp32 on CPU."""
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return amp, channels_last


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
    """Train/val splits whose items stay uint8 (normalised on the device by `DeviceNormalize`), unless
    random erasing, which works on the normalised image, asks for normalising in the workers."""
    from ..data import eval_transform, load_splits, train_transform

    in_workers = cfg.random_erasing > 0
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                         train_transform=train_transform(data_cfg, cfg.img_size, hflip=cfg.hflip,
                                                         auto_augment=cfg.auto_augment,
                                                         random_erasing=cfg.random_erasing, normalize=in_workers),
                         eval_transform=eval_transform(data_cfg, cfg.img_size, normalize=False),
                         download=cfg.download)
    return splits


def make_loaders(cfg: TrainConfig, splits, data_cfg: dict[str, Any], device: torch.device, ctx: Distributed,
                 ) -> tuple[SkipUnreadable | DeviceLoader | DeviceDecodeLoader, SkipUnreadable, EpochSampler]:
    """Train and val loaders of this process's shares that skip unreadable files (shared `.bad_files`
    list), and the train sampler. Validation shards are disjoint and unpadded: every image counts once."""
    quiet = {} if ctx.is_main else {"warn": lambda message: None}  # rank 0 reports the united list
    bad_files = BadFiles(len(splits.train) + len(splits.val), cfg.max_bad_fraction, **quiet)
    store = resident_store(cfg, splits, data_cfg, device, ctx, bad_files) if cfg.in_memory else None
    labels = store.labels.tolist() if store is not None else splits.train_labels
    weights = None
    if cfg.imbalance == "sampler":
        counts = np.bincount(labels, minlength=len(splits.class_names))
        weights = [1.0 / counts[y] for y in labels]
    sampler = EpochSampler(len(labels), cfg.seed, weights, rank=ctx.rank, world_size=ctx.world_size)
    if len(sampler) == 0:
        raise ConfigError(f"{len(labels)} training images cannot feed {ctx.world_size} processes")
    drop_last = len(sampler) > cfg.batch_size
    # An own generator: iterator creation must not draw from the global RNG, which a resumed run restores.
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                  generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate_skipping)
    augment = DeviceAugment(data_cfg, image_size(data_cfg, cfg.img_size), cfg.hflip)
    if store is not None:
        train_loader: SkipUnreadable | DeviceLoader | DeviceDecodeLoader = DeviceLoader(
            store, sampler, cfg.batch_size, augment, drop_last, bad_files)
    elif cfg.decode_on_device:
        files = DataLoader(EncodedFiles(splits.train.samples), batch_size=cfg.batch_size, sampler=sampler,
                           drop_last=drop_last, **{**common, "collate_fn": collate_encoded})
        train_loader = DeviceDecodeLoader(files, sampler, augment, device, bad_files)
    else:
        train_loader = SkipUnreadable(DataLoader(SeededItems(splits.train, cfg.seed), batch_size=cfg.batch_size,
                                                 sampler=sampler, drop_last=drop_last, **common),
                                      bad_files, keep_empty=True)
    val_loader = DataLoader(splits.val, batch_size=cfg.batch_size,
                            sampler=range(ctx.rank, len(splits.val), ctx.world_size), **common)
    return train_loader, SkipUnreadable(val_loader, bad_files), sampler


def resident_store(cfg: TrainConfig, splits, data_cfg: dict[str, Any], device: torch.device, ctx: Distributed,
                   bad_files: BadFiles) -> ImageStore:
    """The training images decoded once, on `device`. Rank 0 decodes (and caches a folder) first; the
    other processes then read its cache instead of decoding the same files again."""
    side = store_size(data_cfg, cfg.img_size)
    mine: dict[str, ImageStore] = {}

    def build() -> tuple[Path | None, bool]:
        mine["store"], path, built = cached_store(splits.train, side, data_cfg, cfg.cache_dir, cfg.workers)
        return path, built

    path, built = ctx.on_main(build)
    store = mine.get("store") or cached_store(splits.train, side, data_cfg, cfg.cache_dir, cfg.workers)[0]
    need = store.images.numel()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free // 2:
            raise ConfigError(f"--in-memory needs {need / 2**30:.1f} GiB for {len(store):,} images at {side}x{side} "
                              f"but the GPU has {free / 2**30:.1f} GiB free; use the file pipeline (drop --in-memory)")
    bad_files.add(Unreadable(file, reason) for file, reason in store.broken.items())
    where = f"; {'built' if built else 'read'} {path}" if path else ""
    if ctx.is_main:
        print(f"in memory: {len(store):,} training images at {side}x{side}, {need / 2**20:,.0f} MiB on {device}{where}",
              file=sys.stderr)
    return store.to(device)


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
    result = _train(cfg, explicit, ctx, device)
    # Only on success: after an error a peer may still sit in a collective, and the process exit (which
    # torchrun turns into ending the whole job) is the way out.
    ctx.close()
    return result


def _locate_resume(cfg: TrainConfig, ctx: Distributed) -> tuple[Path, Path, dict[str, Any]] | None:
    """(run_dir, file, state) to continue from: --resume, or after a torchrun restart the run that the
    failed attempt wrote. Rank 0 picks (and warns about damaged files); every rank loads the file it names."""
    loaded: dict[str, Any] = {}

    def pick() -> tuple[Path, Path] | None:
        target = cfg.resume
        if target is None and elastic_restart_count() > 0:
            found = elastic_restart_target(cfg.output, elastic_run_id())
            target = str(found) if found else None
            print(f"torchrun restart {elastic_restart_count()}: "
                  f"{f'resuming {found}' if found else 'no checkpoint of the failed attempt, starting afresh'}",
                  file=sys.stderr)
        if target is None:
            return None
        run_dir, file, loaded["state"] = find_resume(target, cfg.output)
        return run_dir, file

    picked = ctx.on_main(pick)
    if picked is None:
        return None
    run_dir, file = picked
    return run_dir, file, loaded["state"] if ctx.is_main else load_resume_state(file)


def _evaluate(model: nn.Module, loader, device: torch.device, amp: str, normalize: DeviceNormalize,
              ctx: Distributed) -> EvalResult:
    """Every process evaluates its shard; the parts add up to one result on every process."""
    part = evaluate(model, loader, device, amp, normalize=normalize, allow_empty=True)
    result = merge_results(ctx.gather(part)) if ctx.enabled else part
    if result.num_samples == 0:
        raise ValueError("evaluation set is empty")
    return result


def _share_bad_files(bad_files: BadFiles, ctx: Distributed) -> None:
    """Unite the processes' lists of unreadable files, stop together past the limit, report once."""
    if ctx.enabled:  # add() checks the limit on the united list: every process raises or none does
        bad_files.add(Unreadable(file, reason) for reasons in ctx.gather(dict(bad_files.reasons))
                      for file, reason in reasons.items())
    if ctx.is_main:
        bad_files.report()


def _require_every_class(splits, bad_files: BadFiles) -> None:
    """A class whose every training file is unreadable would train to be never predicted, silently when
    it is smaller than --max-bad-fraction: an error naming it (the files are in bad_files.csv by now)."""
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


def _train(cfg: TrainConfig, explicit: set[str], ctx: Distributed, device: torch.device) -> RunResult:
    located = _locate_resume(cfg, ctx)
    resumed = None
    if located is not None:
        run_dir, resume_file, resumed = located
        cfg = resumed_config(cfg, resumed, explicit)
        if resumed["progress"]["epoch"] > cfg.epochs:
            raise TrainingError(f"{run_dir} has already trained {resumed['progress']['epoch'] - 1} epochs; "
                                f"raise --epochs to train on")
    if cfg.workers is None:
        cfg = dataclasses.replace(cfg, workers=default_workers(device.type))
    if cfg.deterministic:
        make_deterministic()
    else:
        # The batch shape is fixed, so cuDNN may time its conv algorithms once per shape and keep the fastest,
        # as torchvision's and timm's training scripts have it (process-wide, like --deterministic).
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed + ctx.rank)  # model-side randomness (dropout, mixup) differs between processes
    amp, channels_last = resolve_precision(cfg, device)
    say = print if ctx.is_main else (lambda *args, **kwargs: None)

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
    if cfg.sync_bn:
        model = convert_sync_bn(model, ctx, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    train_loader, val_loader, sampler = make_loaders(cfg, splits, data_cfg, device, ctx)
    normalize = DeviceNormalize(data_cfg, channels_last)
    global_batch = cfg.batch_size * ctx.world_size
    ema = None
    if cfg.ema_decay > 0:
        ema = ModelEma(model, cfg.ema_decay)
    run = Run(model=model, step_model=model, ddp=None, optimizer=make_optimizer(model, cfg),
              base_lr=scaled_lr(cfg, global_batch * cfg.accum_steps),
              scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"), ema=ema,
              criterion=make_criterion(cfg, splits, device), mixer=make_batch_mixer(cfg, num_classes),
              device=device, amp=amp, normalize=normalize, batches_per_epoch=len(train_loader),
              global_batch=global_batch, dist=ctx)

    history: list[dict[str, Any]] = []
    progress = Progress()
    if resumed is not None:
        if ctx.is_main:
            for stray in remove_stray_temp_files(run_dir):
                say(f"removed {stray.name}, left by an interrupted write", file=sys.stderr)
            for newer in abandon_newer_states(run_dir, resume_file):
                say(f"moved {newer.name} (newer than the state resumed from) to {newer.parent}", file=sys.stderr)
        progress, history = restore(run, resumed, cfg.seed), list(resumed["history"])
        say(f"resuming {run_dir} from {resume_file.name} on {ctx.world_size} process(es): epoch {progress.epoch}, "
            f"image {progress.samples_in_epoch:,}/{len(splits.train):,}, step {progress.global_step}", file=sys.stderr)
    else:
        run_dir = ctx.on_main(lambda: new_run_dir(cfg))
    # Wrapped after restoring: DDP starts every process from rank 0's weights and buffers.
    run.ddp = wrap_model(model, ctx, device, cfg.ddp_bucket_mb, cfg.ddp_static_graph) if ctx.enabled else None
    run.step_model = run.ddp or model
    if cfg.compile:
        keep_compile_cache(cfg.cache_dir)
        run.step_model = torch.compile(run.step_model, mode=compile_mode_arg(cfg.compile_mode))
        run.cuda_graphs = cfg.compile_mode in CUDA_GRAPH_MODES

    bad_files = train_loader.bad_files
    classes_checked_at = 0  # how many broken files _require_every_class last saw
    writer = None
    if ctx.is_main:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
            {**cfg.to_dict(), "resolved_device": str(device), "resolved_amp": amp,
             "resolved_channels_last": channels_last, "world_size": ctx.world_size, "global_batch": global_batch,
             "resolved_lr": run.base_lr, "elastic_run_id": elastic_run_id()}, sort_keys=False))
        bad_files.attach(run_dir / BAD_FILES_CSV)
        writer = _tensorboard(cfg, run_dir, model, device, data_cfg)
    say(f"{splits.description}; model {cfg.model} ({sum(p.numel() for p in model.parameters()):,} params) "
        f"on {device}{f' x {ctx.world_size} processes' if ctx.enabled else ''}, amp {amp}", file=sys.stderr)

    def checkpoint() -> None:
        rngs = ctx.gather(rng_state())  # each process's own streams, for an exact resume at the same size
        if ctx.is_main:
            save_resume_state(run_dir, resume_state(run, progress, history, cfg, splits.class_names, rngs),
                              keep=cfg.keep_checkpoints)

    eval_model = ema.module if ema is not None else model
    while progress.epoch <= cfg.epochs:
        epoch = progress.epoch
        sampler.set_epoch(epoch, start=progress.samples_in_epoch)
        stats = train_one_epoch(run, train_loader, cfg, progress, checkpoint)
        t_eval = time.perf_counter()
        for module in {id(m): m for m in (model, eval_model)}.values():
            ctx.average_buffers(module)
        val = _evaluate(eval_model, val_loader, device, amp, normalize, ctx)
        _share_bad_files(bad_files, ctx)
        if len(bad_files) != classes_checked_at:  # a scan of every sample: only when new broken files turned up
            _require_every_class(splits, bad_files)
            classes_checked_at = len(bad_files)
        row = dict(epoch=epoch, **stats, val_loss=val.loss, val_top1=val.top1, val_top5=val.top5,
                   lr=run.optimizer.param_groups[0]["lr"], seconds=progress.seconds + time.perf_counter() - t_eval)
        history.append(row)
        improved = val.top1 > progress.best_top1
        if improved:
            progress.best_top1, progress.best_epoch, progress.stale_epochs = val.top1, epoch, 0
        else:
            progress.stale_epochs += 1
        if ctx.is_main:
            last = save_weights(eval_model, run_dir / "last.safetensors")
            if improved:
                atomic_copy(last, run_dir / "best.safetensors")
        progress.start_epoch(epoch + 1)
        checkpoint()
        if ctx.is_main:
            write_summary_csv(history, run_dir / "summary.csv")
            plot_curves(history, run_dir / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
            if writer is not None:
                for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
                    writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
        say(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:6.2f}  "
            f"val loss {val.loss:.4f} top1 {val.top1:6.2f} top5 {val.top5:6.2f}  lr {row['lr']:.2e}  "
            f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s{'  *' if improved else ''}",
            file=sys.stderr)
        if cfg.patience and progress.stale_epochs >= cfg.patience:
            say(f"early stop: no better val top-1 for {progress.stale_epochs} epochs", file=sys.stderr)
            break
    if writer is not None:
        writer.close()

    # Final report of the best model (the weights users will ship), on the validation set. Rank 0 has the
    # file; the others get its weights over the wire (their disks may not share the run directory).
    if ctx.is_main:
        load_checkpoint(eval_model, run_dir / "best.safetensors")
    ctx.broadcast_module(eval_model)
    final = _evaluate(eval_model, val_loader, device, amp, normalize, ctx)
    metrics = dict(best_top1=progress.best_top1, best_epoch=progress.best_epoch, best_top5=final.top5,
                   best_val_loss=final.loss, epochs_run=len(history), global_steps=progress.global_step,
                   num_classes=num_classes, class_names=list(splits.class_names), train_samples=len(splits.train),
                   val_samples=final.num_samples, model=cfg.model, device=str(device), amp=amp,
                   world_size=ctx.world_size, total_seconds=sum(r["seconds"] for r in history),
                   unreadable_files=len(bad_files))
    if ctx.is_main:
        metrics.update(write_final_reports(run_dir, final, list(splits.class_names)))
        atomic_write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, progress.best_top1, progress.best_epoch, metrics)


def make_deterministic() -> None:
    """Bitwise-repeatable runs: deterministic kernels only (cuBLAS needs its workspace pinned for that)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


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
