"""A training run assembled: `build_run` turns a config into everything `fit` needs (data, loaders, model, step,
run folder, progress), complete when it returns. The same code runs alone or as one process of several."""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NoReturn

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..analysis.memory import check_activation_memory
from ..data.bad_files import BadFiles, SkipUnreadable, Unreadable, collate_skipping
from ..data.datasets import DataSplits, class_difference, load_splits
from ..data.device_decode import DeviceDecodeLoader, EncodedFiles, collate_encoded
from ..data.loader_workers import own_process_group
from ..data.in_memory import DeviceAugment, DeviceLoader, ImageStore, cached_store, store_size
from ..data.transforms import eval_transform, image_size, train_transform
from ..device import default_workers
from ..errors import ConfigError, RunStopped
from ..hub import Pretrained, find_pretrained, load_pretrained
from ..models import build_model, get_config
from ..models.pretrained_cfg import PretrainedCfg
from ..models.resnet import check_img_size
from .checkpoint import rng_state, seed_everything
from .config import AUTO_LR, Recorded, TrainConfig
from .distributed import Distributed, convert_sync_bn, elastic_run_id
from .epoch import Progress
from .lr_find import resolve_auto_lr
from .recipe import DataFacts, Recipe, choose_recipe
from .resume import Resumed, checkpoint_state, data_identity, locate_resume
from .run_dir import RunDir
from .sampling import EpochSampler, SeededItems
from .stopping import StopRequest
from .step import TrainStep, make_train_step, wrap_step


@dataclass
class Run:
    """Everything a training run is made of while it runs."""

    cfg: TrainConfig
    ctx: Distributed
    splits: DataSplits
    step: TrainStep
    train_loader: Iterable  # this process's share of the epoch: SkipUnreadable, DeviceLoader or DeviceDecodeLoader
    val_loader: SkipUnreadable  # this process's disjoint, unpadded shard of the validation set
    sampler: EpochSampler
    bad_files: BadFiles
    run_dir: RunDir  # on every rank; only rank 0 writes into it
    batches_per_epoch: int  # this process's share of a whole epoch
    progress: Progress = field(default_factory=Progress)
    history: list[dict[str, Any]] = field(default_factory=list)
    classes_checked_at: int = 0  # how many broken files `require_every_class` last saw
    stop: StopRequest = field(default_factory=StopRequest)
    stop_signum: int = 0  # the signal the processes agreed to stop for
    saved_at: tuple[int, int] | None = None  # (epoch, samples_in_epoch) of the newest checkpoint
    data: dict[str, Any] = field(default_factory=dict)  # the data's identity, in every checkpoint (resume.py)
    recipe: str = ""  # what --recipe auto chose, in a line (recipe.py); a resumed run's from its config.yaml

    def stopped_early(self) -> bool:
        """--patience epochs without a better val top-1 (a resumed run that had stopped so stays stopped)."""
        return bool(self.cfg.patience) and self.progress.stale_epochs >= self.cfg.patience

    def stop_due(self, cycle: int | None = None) -> bool:
        """Whether to stop here for a signal; `cycle`: the accumulation cycle of the epoch (see StopRequest)."""
        self.stop_signum = self.stop.agreed(self.ctx, cycle)
        return bool(self.stop_signum)

    def stop_here(self) -> NoReturn:
        """Save this exact place (unless the newest checkpoint is of it), then end the run with RunStopped."""
        progress, name = self.progress, StopRequest.name(self.stop_signum)
        if self.saved_at != (progress.epoch, progress.samples_in_epoch):
            self.save_checkpoint()
        # No process leaves before rank 0 has written it: torchrun ends the others as soon as one exits
        self.ctx.any(False)
        self.run_dir.close()
        where = (f"epoch {progress.epoch}, image {min(progress.samples_in_epoch, len(self.splits.train)):,}/"
                 f"{len(self.splits.train):,} (step {progress.global_step})")
        raise RunStopped(f"stopped by {name} at {where}, saved; go on with `resnets train --resume "
                         f"{self.run_dir.path}`", 128 + self.stop_signum)

    def save_checkpoint(self) -> None:
        """A checkpoint of this exact place; every rank gives its random state, rank 0 writes."""
        rngs = self.ctx.gather(rng_state())  # each process's own streams, for an exact resume at the same size
        # The EMA averages each process's own BN statistics: each process's copy is saved, so that a resumed run
        # carries on from what every process had (and saving changes nothing, wherever a checkpoint falls)
        ema = self.step.ema
        ema_buffers = self.ctx.gather({k: b.cpu() for k, b in ema.module.named_buffers()}) if ema else None
        if self.ctx.is_main:
            state = checkpoint_state(self.step, self.progress, self.history, self.cfg, self.data, rngs, ema_buffers)
            self.run_dir.save_checkpoint(state, keep=self.cfg.keep_checkpoints)
        self.saved_at = (self.progress.epoch, self.progress.samples_in_epoch)

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, file=sys.stderr)


@dataclass
class Parts:
    """What a run trains with, assembled from its options and its data: `build_run` wraps them into a Run,
    `resnets lr-find` sweeps the lr with them."""
    cfg: TrainConfig  # with the recipe's choices
    recipe: Recipe
    splits: DataSplits
    pretrained_cfg: PretrainedCfg
    data: dict[str, Any]  # the data's identity (resume.py)
    model: nn.Module
    bad_files: BadFiles
    train_loader: Iterable
    val_loader: Iterable
    sampler: EpochSampler
    class_counts: list[int]
    amp: str
    channels_last: bool

    def make_step(self, cfg: TrainConfig, ctx: Distributed, device: torch.device) -> TrainStep:
        return make_train_step(self.model, cfg, self.pretrained_cfg, device, self.amp, self.channels_last, ctx,
                               self.class_counts)


def assemble(cfg: TrainConfig, explicit: set[str], ctx: Distributed, device: torch.device,
             resumed: Resumed | None = None) -> Parts:
    """The data, recipe, model and loaders of `cfg`: a new run's (the recipe chooses what `explicit` leaves open),
    or the `resumed` one's (its checkpoint's options kept, its data checked to be the same)."""
    if cfg.workers is None:
        cfg = dataclasses.replace(cfg, workers=default_workers(device.type))
    set_process_switches(cfg, ctx.rank)
    amp, channels_last = resolve_precision(cfg, device)
    pretrained = fetch_pretrained(cfg, ctx) if cfg.pretrained and resumed is None else None
    splits = load_data(cfg)
    recipe = Recipe(cfg.recipe)
    if resumed is None:  # a resumed run keeps the options its checkpoint holds, the recipe's choices among them
        cfg, recipe = adapt_to_data(cfg, explicit, splits, pretrained, ctx)
    pretrained_cfg = training_pretrained_cfg(cfg, pretrained)
    set_transforms(splits, cfg, pretrained_cfg)
    data = data_identity(splits, cfg.data_dir)
    if resumed is not None:
        resumed.check_data(data, cfg)
    model = build_training_model(cfg, splits, pretrained_cfg, ctx, device, channels_last, pretrained)
    bad_files = BadFiles(len(splits.train) + len(splits.val), cfg.max_bad_fraction,
                         **({} if ctx.is_main else {"warn": lambda message: None}))  # rank 0 reports the united list
    train_loader, val_loader, sampler = make_loaders(cfg, splits, pretrained_cfg, device, ctx, bad_files)
    class_counts = np.bincount(splits.train_labels, minlength=len(splits.class_names)).tolist()
    return Parts(cfg, recipe, splits, pretrained_cfg, data, model, bad_files, train_loader, val_loader, sampler,
                 class_counts, amp, channels_last)


def build_run(cfg: TrainConfig, explicit: set[str], ctx: Distributed, device: torch.device,
              stop: StopRequest | None = None) -> Run:
    """The run `cfg` asks for: a new one, or the one a checkpoint continues (`explicit`: the options the user
    gave, which a resume applies where it may). `stop`: the signals' handler the run answers to."""
    resumed = locate_resume(cfg, ctx)
    if resumed is not None:  # --lr auto again (a torchrun restart, `-c` of its config.yaml): the lr the run found
        cfg = resumed.config(cfg, explicit - {"lr"} if cfg.lr == AUTO_LR else explicit)
    parts = assemble(cfg, explicit, ctx, device, resumed)
    cfg, splits = parts.cfg, parts.splits
    asked_lr = cfg.lr  # config.yaml keeps `lr: auto` as given; its resolved_lr says what it became
    cfg = resolve_auto_lr(cfg, ctx, parts.train_loader, parts.sampler,
                          lambda sweep_cfg: parts.make_step(sweep_cfg, ctx, device),
                          resumed_from=resumed.file if resumed is not None else None)
    step = parts.make_step(cfg, ctx, device)
    progress, history = Progress(), []
    if resumed is not None:
        progress, history = resumed.restore(step, cfg)
    run_dir = RunDir(resumed.run_dir) if resumed is not None else None
    try:  # rank 0 locks the folder (the one writer); the lock's error reaches every rank
        if run_dir is not None:
            ctx.on_main(lambda: run_dir.acquire().tidy_for_resume(resumed.file))
        else:
            run_dir = new_run_dir(cfg, ctx)
        step = wrap_step(step, cfg, device)  # after restoring: DDP starts every process from rank 0's weights
        run = Run(cfg=cfg, ctx=ctx, splits=splits, step=step, train_loader=parts.train_loader,
                  val_loader=parts.val_loader, sampler=parts.sampler, bad_files=parts.bad_files, run_dir=run_dir,
                  batches_per_epoch=len(parts.train_loader), progress=progress, history=history,
                  stop=stop or StopRequest(), data=parts.data,
                  recipe=parts.recipe.summary() if resumed is None else run_dir.recorded_recipe(),
                  saved_at=(progress.epoch, progress.samples_in_epoch) if resumed is not None else None)
        if ctx.is_main:
            _start_run_dir(run, device, parts.amp, parts.channels_last, parts.pretrained_cfg, asked_lr)
    except BaseException:
        if run_dir is not None:
            run_dir.release()
        raise
    if resumed is not None:
        _say_resumed(resumed, progress, splits, ctx)
    else:  # said once the run is built: a mistake found on the way stays the one line printed
        run.say(run.recipe)
    params = sum(p.numel() for p in parts.model.parameters())
    run.say(f"{splits.description}; model {cfg.model} ({params:,} params) "
            f"on {device}{f' x {ctx.world_size} processes' if ctx.enabled else ''}, amp {parts.amp}")
    return run


def new_run_dir(cfg: TrainConfig, ctx: Distributed) -> RunDir:
    """A new run folder, made and locked by rank 0; the others learn its path."""
    made = ctx.on_main(lambda: RunDir.create(cfg.output, cfg.name, cfg.model), share=lambda made: made.path)
    return made if ctx.is_main else RunDir(made)


def _say_resumed(resumed: Resumed, progress: Progress, splits: DataSplits, ctx: Distributed) -> None:
    if ctx.is_main:
        print(f"resuming {resumed.run_dir} from {resumed.file.name} on {ctx.world_size} process(es): epoch "
              f"{progress.epoch}, image {progress.samples_in_epoch:,}/{len(splits.train):,}, step "
              f"{progress.global_step}", file=sys.stderr)


def _start_run_dir(run: Run, device: torch.device, amp: str, channels_last: bool,
                   pretrained_cfg: PretrainedCfg, asked_lr: float | str) -> None:
    """config.yaml, the bad-file list and TensorBoard of a run about to train (rank 0)."""
    cfg = run.cfg
    run.run_dir.write_config({**cfg.to_dict(), "lr": asked_lr}, Recorded(
        resolved_device=str(device), resolved_amp=amp, resolved_channels_last=channels_last,
        world_size=run.ctx.world_size, global_batch=cfg.batch_size * run.ctx.world_size,
        resolved_lr=run.step.base_lr, elastic_run_id=elastic_run_id(), recipe_choices=run.recipe))
    run.bad_files.attach(run.run_dir.bad_files_csv)
    if cfg.log_tensorboard:
        run.run_dir.open_tensorboard(run.step.model, torch.zeros((1, *pretrained_cfg.input_size), device=device))


def set_process_switches(cfg: TrainConfig, rank: int) -> None:
    """Process-wide settings, as torchvision's and timm's training scripts make them, and leave them."""
    if cfg.deterministic:  # bitwise-repeatable: deterministic kernels only (cuBLAS needs its workspace pinned)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        # The batch shape is fixed, so cuDNN may time its conv algorithms once per shape and keep the fastest.
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed + rank)  # model-side randomness (dropout, mixup) differs between processes


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple[str, bool]:
    """Autocast mode and memory format: bf16 + channels_last on CUDA, plain fp32 on CPU."""
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return amp, channels_last


def load_data(cfg: TrainConfig) -> DataSplits:
    """Train/val splits without transforms yet: the recipe looks at the data before the transforms are chosen."""
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                         download=cfg.download, max_image_mb=cfg.max_image_mb)
    if cfg.num_classes is not None and cfg.num_classes != len(splits.class_names):
        raise ConfigError(f"--num-classes {cfg.num_classes} but the data has {len(splits.class_names)} classes")
    return splits


def set_transforms(splits: DataSplits, cfg: TrainConfig, pretrained_cfg: PretrainedCfg) -> None:
    """Training augmentation and evaluation preprocessing onto the splits. Items stay uint8 (normalised on the
    device by `DeviceNormalize`), unless random erasing, which works on the normalised image, asks for
    normalising in the workers."""
    in_workers = cfg.random_erasing > 0
    splits.train.transform = train_transform(pretrained_cfg, cfg.img_size, hflip=cfg.hflip,
                                             auto_augment=cfg.auto_augment, random_erasing=cfg.random_erasing,
                                             normalize=in_workers, crop_scale=cfg.crop_scale)
    splits.val.transform = eval_transform(pretrained_cfg, cfg.img_size, normalize=False)


def adapt_to_data(cfg: TrainConfig, explicit: set[str], splits: DataSplits, pretrained: Pretrained | None,
                  ctx: Distributed) -> tuple[TrainConfig, Recipe]:
    """--recipe auto: the options chosen for this data, model and run (recipe.py); `Recipe.summary()` says them."""
    input_side = get_config(cfg.model).default_pretrained_cfg().input_size[-1]
    recipe = choose_recipe(cfg, explicit, DataFacts.of(splits), input_side, pretrained is not None,
                           ctx.world_size)
    cfg = recipe.apply(cfg)
    cfg.validate()
    return cfg, recipe


def fetch_pretrained(cfg: TrainConfig, ctx: Distributed) -> Pretrained:
    """--pretrained's weights, downloaded by rank 0 first; the others then find them in the cache (or, on
    another machine, fetch their own copy)."""
    found = ctx.on_main(lambda: find_pretrained(cfg.pretrained, cfg.model), share=lambda found: None)
    return found if found is not None else find_pretrained(cfg.pretrained, cfg.model)


def training_pretrained_cfg(cfg: TrainConfig, pretrained: Pretrained | None) -> PretrainedCfg:
    """The run's preprocessing: the architecture's at --img-size, normalised as the weights it starts from were
    trained (their mean, std and interpolation: what their first layers expect), where they say."""
    run_cfg = get_config(cfg.model).default_pretrained_cfg().with_img_size(cfg.img_size)
    source = pretrained.preprocessing() if pretrained is not None else None
    if source is None:
        return run_cfg
    source = source.with_channels(run_cfg.input_size[0])
    return run_cfg.replace(mean=source.mean, std=source.std, interpolation=source.interpolation)


def build_training_model(cfg: TrainConfig, splits: DataSplits, pretrained_cfg: PretrainedCfg, ctx: Distributed,
                         device: torch.device, channels_last: bool, pretrained: Pretrained | None) -> nn.Module:
    """The model to train, on `device`: --pretrained loaded (not when resuming: the checkpoint has the
    weights), the run's own preprocessing and classes, --freeze-backbone, --sync-bn."""
    model = build_model(cfg.model, num_classes=len(splits.class_names), drop_path_rate=cfg.drop_path_rate)
    check_img_size(model, pretrained_cfg.input_size[-1])
    amp = resolve_precision(cfg, device)[0]  # autocast keeps activations in 16 bits
    check_activation_memory(model, pretrained_cfg.input_size[-1], cfg.batch_size, device, training=True,
                            element_bytes=2 if amp in ("bf16", "fp16") else 4)
    if pretrained is not None:
        start_from(model, cfg, pretrained, list(splits.class_names))
    # After loading: the weights' own preprocessing and classes must not replace this run's.
    model.pretrained_cfg, model.class_names = pretrained_cfg, list(splits.class_names)
    if cfg.freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    if cfg.sync_bn:
        model = convert_sync_bn(model, ctx, device)
    model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def start_from(model: nn.Module, cfg: TrainConfig, pretrained: Pretrained, class_names: list[str]) -> None:
    """Fine-tuning weights into `model`. A head of the right size but trained on other classes (or in
    another order) would map each of them to a wrong label: an error, unless --remap-classes resets it."""
    report = load_pretrained(model, pretrained)
    saved = report.metadata.get("class_names")
    difference = (class_difference([str(n) for n in saved], class_names, ordered=True)
                  if isinstance(saved, list) and not report.skipped else None)
    if difference and not cfg.remap_classes:
        raise ConfigError(f"{pretrained.name} was trained on other classes than the data ({difference}); "
                          f"pass --remap-classes to fine-tune it with a new head")
    if difference:
        model.reset_classifier(len(class_names))
    model.class_names = list(class_names)  # the weights' own, if they had any, were loaded with them
    print(f"{report}; head re-initialised for other classes ({difference})" if difference else report,
          file=sys.stderr)


def make_loaders(cfg: TrainConfig, splits: DataSplits, pretrained_cfg: PretrainedCfg, device: torch.device,
                 ctx: Distributed, bad_files: BadFiles) -> tuple[Iterable, SkipUnreadable, EpochSampler]:
    """Train and val loaders of this process's shares that skip unreadable files (into `bad_files`), and the
    train sampler. Validation shards are disjoint and unpadded: every image counts once."""
    store = in_memory_store(cfg, splits, pretrained_cfg, device, ctx, bad_files) if cfg.in_memory else None
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
                  generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate_skipping,
                  worker_init_fn=own_process_group)
    augment = DeviceAugment(pretrained_cfg, image_size(pretrained_cfg, cfg.img_size), cfg.hflip, cfg.crop_scale)
    train_loader: Iterable
    if store is not None:
        train_loader = DeviceLoader(store, sampler, cfg.batch_size, augment, drop_last, bad_files)
    elif cfg.decode_on_device:
        files = DataLoader(EncodedFiles(splits.train.samples, splits.train.max_bytes), batch_size=cfg.batch_size,
                           sampler=sampler, drop_last=drop_last, **{**common, "collate_fn": collate_encoded})
        train_loader = DeviceDecodeLoader(files, sampler, augment, device, bad_files)
    else:
        train_loader = SkipUnreadable(DataLoader(SeededItems(splits.train, cfg.seed), batch_size=cfg.batch_size,
                                                 sampler=sampler, drop_last=drop_last, **common),
                                      bad_files, keep_empty=True)
    val_loader = DataLoader(splits.val, batch_size=cfg.batch_size,
                            sampler=range(ctx.rank, len(splits.val), ctx.world_size), **common)
    return train_loader, SkipUnreadable(val_loader, bad_files), sampler


def in_memory_store(cfg: TrainConfig, splits: DataSplits, pretrained_cfg: PretrainedCfg, device: torch.device,
                    ctx: Distributed, bad_files: BadFiles) -> ImageStore:
    """--in-memory: the training images decoded once, on `device`. Rank 0 decodes (and caches a folder)
    first; the other processes then read its cache instead of decoding the same files again."""
    side = store_size(pretrained_cfg, cfg.img_size)
    def build() -> tuple[ImageStore, Path | None, bool]:
        return cached_store(splits.train, side, pretrained_cfg, cfg.cache_dir, cfg.workers)

    def without_the_store(made: tuple[ImageStore, Path | None, bool]) -> tuple[None, Path | None, bool]:
        return None, *made[1:]  # the others read the cache file rank 0 wrote, rather than receive the tensor

    store, path, built = ctx.on_main(build, share=without_the_store)
    if store is None:
        store = build()[0]
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

