"""The one typed configuration of `resnets train`: defaults < YAML file (-c) < command-line flags.

Each field is an option: its help, choices and group are the field's metadata (`options.option`), from which
`resnets train --help` is built; the choices of an enumeration are the keys of the table that implements it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..caches import COMPILE_MODES, CUDA_GRAPH_MODES
from ..data.datasets import DATASETS
from ..data.images import MAX_IMAGE_MB
from ..data.transforms import AUTO_AUGMENT
from ..device import AMP_DTYPES
from ..errors import ConfigError
from ..options import add_options, check_choices, from_options, load_yaml, option
from .optim import LR_SCALING, OPTIMIZERS, SCHEDULES

GROUPS = [("data", "data"), ("model", "model"), ("optimisation", "optimisation"), ("augmentation", "augmentation"),
          ("hardware", "hardware and speed"), ("checkpoints", "run folder, checkpoints and reproducibility"),
          ("distributed", "several processes (torchrun; -b is per process)"), ("logging", "logging")]
MAX_WORKERS = 512
AUTO_LR = "auto"  # --lr auto: the range test picks it when the run starts (lr_find.py)
RECIPES = ("auto", "imagenet")  # --recipe: chosen for the data (recipe.py), or the defaults below
IMBALANCE = ("none", "weights", "sampler")  # --imbalance: class-weighted loss (step.py), balanced sampling (run.py)


@dataclass
class TrainConfig:
    """Everything a training run depends on. The resolved copy is written to the run's config.yaml.

    The defaults are the embedded demo: the scikit-learn handwritten digits (1,797 8x8 images, upscaled to
    32x32) on a CIFAR ResNet-20, about a minute on two CPU cores.
    """

    dataset: str = option("digits", "what --data-dir holds (a folder or a .csv path implies folder or csv)",
                          group="data", choices=DATASETS)
    data_dir: str | None = option(None, "image folder (class subfolders, or train/ and val/), CSV of file,label, or "
                                        "the CIFAR folder", group="data", metavar="PATH")
    val_fraction: float = option(0.2, "share of each class held out for validation when the data has no val/ or "
                                      "test/", group="data")
    download: bool = option(False, "download CIFAR if it is missing", group="data")
    max_bad_fraction: float = option(0.01, "share of unreadable images allowed (skipped, listed in bad_files.csv); "
                                           "more stops the run", group="data")
    max_image_mb: int = option(MAX_IMAGE_MB, "image files larger than N MiB, and files that are not regular files (a "
                                             "FIFO, a device), are unreadable: skipped and listed, never read",
                               group="data")
    model: str = option("cifar_resnet20", "architecture, a name from `resnets models`", group="model", metavar="NAME")
    pretrained: str | None = option(None, "weights to start from: alone, --model's default published set; or a set "
                                          "(resnet50.a1_in1k, or a tag), hf-hub:ORG/REPO, a URL, a weights file, "
                                          "folder or run. A head of another size starts fresh", group="model",
                                    metavar="WEIGHTS", const="default")
    remap_classes: bool = option(False, "allow --pretrained weights trained on other classes: their head is reset",
                                 group="model")
    num_classes: int | None = option(None, "must agree with the data when given (default: the data's classes)",
                                     group="model")
    freeze_backbone: bool = option(False, "train only the classifier (BatchNorm statistics frozen too)", group="model")
    head_epochs: int = option(0, "train only the classifier for the first N epochs (as --freeze-backbone), then the "
                                 "whole model", group="model")
    img_size: int | None = option(None, "square training and validation size (default: the model's input size)",
                                  group="model", metavar="PX")
    drop_path_rate: float = option(0.0, "stochastic depth at the last block, rising linearly to it", group="model")
    recipe: str = option("auto", "auto: choose batch, lr, warm-up, augmentation, label smoothing, EMA and the "
                                  "training size from the data, the model and the epochs (printed at the start, "
                                  "written to config.yaml; options given win); imagenet: the defaults listed here, "
                                  "ImageNet's", group="optimisation", choices=RECIPES)
    epochs: int = option(8, "epochs to train", group="optimisation")
    batch_size: int = option(64, "images per step and process", group="optimisation", short="-b")
    lr: float | str = option(0.1, "peak learning rate (after the warm-up), or auto: the one the learning-rate range "
                                  "test suggests (`resnets lr-find`)", group="optimisation", metavar="LR|auto")
    layer_decay: float | None = option(None, "layer-wise lr decay F: the head at --lr, each stage before it (layer4 "
                                             "... layer1, then the stem) at F times the next one's (default: off)",
                                       group="optimisation", metavar="F")
    weight_decay: float = option(5e-4, "L2 penalty on conv and linear weights (not on BN parameters or biases)",
                                 group="optimisation")
    opt: str = option("sgd", "optimizer", group="optimisation", choices=tuple(OPTIMIZERS))
    momentum: float = option(0.9, "SGD momentum", group="optimisation")
    sched: str = option("cosine", "learning-rate schedule after the warm-up", group="optimisation",
                        choices=tuple(SCHEDULES))
    warmup_epochs: float = option(1.0, "linear warm-up from lr/100, in epochs (fractions allowed)",
                                  group="optimisation")
    decay_epochs: int = option(30, "--sched step: multiply the lr by --decay-rate every N epochs", group="optimisation")
    decay_milestones: list[int] = option([30, 60, 90], "--sched multistep: epochs at which the lr is multiplied by "
                                                       "--decay-rate", group="optimisation", metavar="EPOCH")
    decay_rate: float = option(0.1, "factor of each step or milestone decay", group="optimisation")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", group="optimisation")
    ema_decay: float = option(0.0, "exponential moving average of the weights, e.g. 0.999 (0: off); validation and "
                                   "best.safetensors use the average", group="optimisation")
    accum_steps: int = option(1, "batches whose gradients add up to one optimizer step", group="optimisation")
    clip_grad: float = option(0.0, "largest gradient norm (0: off)", group="optimisation")
    imbalance: str = option("none", "uneven classes: class-weighted loss or balanced sampling", group="optimisation",
                            choices=IMBALANCE)
    patience: int = option(0, "stop after N epochs without a better val top-1 (0: off)", group="optimisation")
    skip_nonfinite: int = option(0, "skip up to N steps with a non-finite loss in a row instead of stopping",
                                 group="optimisation")
    hflip: float | None = option(None, "probability of a horizontal flip (default: 0.5; 0 for digits, a mirrored 2 is "
                                       "no 2)", group="augmentation")
    auto_augment: str | None = option(None, "RandAugment or TrivialAugmentWide (default: none)", group="augmentation",
                                      choices=tuple(AUTO_AUGMENT))
    crop_scale: float = option(0.08, "smallest share of the image's area a random crop keeps (images over 64 px; "
                                      "smaller ones are padded and cropped)", group="augmentation")
    random_erasing: float = option(0.0, "probability of erasing a random rectangle", group="augmentation")
    mixup: float = option(0.0, "alpha of MixUp's Beta(alpha, alpha) (0: off)", group="augmentation")
    cutmix: float = option(0.0, "alpha of CutMix's Beta(alpha, alpha) (0: off)", group="augmentation")
    device: str = option("auto", "auto (a GPU when there is one), cpu, cuda, cuda:N", group="hardware",
                         metavar="DEVICE")
    amp: str = option("auto", "mixed precision (auto: bf16 on CUDA, off on the CPU)", group="hardware",
                      choices=("auto", *AMP_DTYPES))
    channels_last: bool | None = option(None, "channels_last memory format (default: on CUDA)", group="hardware")
    compile: bool = option(False, "torch.compile the training step", group="hardware")
    compile_mode: str = option("default", "with --compile: reduce-overhead adds CUDA graphs, max-autotune times "
                                          "kernels", group="hardware", choices=COMPILE_MODES)
    in_memory: bool = option(False, "decode the training images once into memory on the device and crop/flip whole "
                                    "batches there (data that fits)", group="hardware")
    decode_on_device: bool = option(False, "workers only read JPEG bytes; the device decodes (nvJPEG on a GPU) and "
                                           "crops/flips whole batches", group="hardware")
    cache_dir: str | None = option(None, "where --in-memory keeps decoded folders and --compile its caches (default: "
                                         "~/.cache/resnets)", group="hardware", metavar="DIR")
    workers: int | None = option(None, "loader processes, 0: load in this process (default: 0 for digits, else the "
                                       "cores, at most 16 feeding a GPU, 8 the CPU)", group="hardware", short="-j")
    output: str = option("runs", "folder that holds the run folders", group="checkpoints", metavar="DIR")
    name: str | None = option(None, "run folder name (default: the time and the model)", group="checkpoints",
                              metavar="NAME")
    resume: str | None = option(None, "continue a run: auto (the newest under --output), a run folder or a "
                                      "checkpoint-*.pt", group="checkpoints", metavar="RUN")
    resume_on_changed_data: bool = option(False, "resume even though the data differs from the checkpoint's (files "
                                                 "added, removed or relabelled, classes renamed): the split and the "
                                                 "labels may then differ from the run's", group="checkpoints")
    checkpoint_every: int = option(0, "also write a checkpoint every N optimizer steps (0: at each epoch's end only)",
                                   group="checkpoints")
    keep_checkpoints: int = option(2, "checkpoints kept per run (best.safetensors is kept apart, always)",
                                   group="checkpoints")
    seed: int = option(0, "seeds the split, the data order, augmentation and initialisation", group="checkpoints")
    deterministic: bool = option(False, "deterministic kernels only: identical weights from identical runs",
                                 group="checkpoints")
    sync_bn: bool = option(False, "BatchNorm statistics over the global batch (GPUs only)", group="distributed")
    scale_lr: str = option("none", "take --lr as the rate for --lr-base-batch and scale it to the global batch "
                                   "(batch-size x processes x accum-steps)", group="distributed",
                           choices=tuple(LR_SCALING))
    lr_base_batch: int = option(256, "the batch --lr is meant for, with --scale-lr", group="distributed")
    dist_timeout: float = option(600.0, "seconds a process waits for the others in a collective before the job fails",
                                 group="distributed")
    ddp_bucket_mb: float = option(25.0, "size of DDP's gradient all-reduce buckets in MB", group="distributed")
    ddp_static_graph: bool = option(False, "DDP static_graph: the same parameters get gradients every step",
                                    group="distributed")
    log_tensorboard: bool = option(False, "write scalars and the model graph for TensorBoard (pip install "
                                          "'resnets[tensorboard]')", group="logging")
    progress: bool = option(True, "progress bars (shown only on a terminal)", group="logging")

    def resolved(self) -> "TrainConfig":
        """Fill the 'auto' fields that do not depend on the machine."""
        cfg = dataclasses.replace(self)
        if cfg.data_dir:  # absolute: a resume started elsewhere (a requeued job's other directory) finds it too
            cfg.data_dir = os.path.abspath(os.path.expanduser(cfg.data_dir))
        if cfg.data_dir and cfg.dataset == "digits":
            path = Path(cfg.data_dir)
            cfg.dataset = "csv" if path.suffix.lower() == ".csv" else "folder"
        if cfg.workers is None and cfg.dataset == "digits":
            # Worker processes only pay off when there are files to decode; on in-memory tensors they
            # just compete with the training threads (digits on 2 cores: 268 img/s with 0, 211 with 2).
            cfg.workers = 0
        if cfg.hflip is None:
            cfg.hflip = 0.0 if cfg.dataset == "digits" else 0.5
        if cfg.pretrained in ("on", "off"):  # YAML's `pretrained: true` (options.py reads a bool as on/off)
            cfg.pretrained = "default" if cfg.pretrained == "on" else None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        check_choices(self)
        _check_ranges(self)
        _check_combinations(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


def _check_ranges(cfg: TrainConfig) -> None:
    """Every number within what it means; a nan fails each test below too."""
    rules = [
        (("epochs", "batch_size", "accum_steps", "keep_checkpoints", "lr_base_batch", "decay_epochs", "max_image_mb"),
         lambda v: v >= 1, "must be >= 1"),
        (("workers", "patience", "checkpoint_every", "skip_nonfinite", "head_epochs"), lambda v: v is None or v >= 0,
         "must be >= 0"),
        # a process each: more than any machine has cores is a typo (or a crafted checkpoint), not a setting
        (("workers",), lambda v: v is None or v <= MAX_WORKERS, f"must be <= {MAX_WORKERS}"),
        (("hflip", "random_erasing", "label_smoothing"), lambda v: v is None or 0.0 <= v <= 1.0, "must be in [0, 1]"),
        (("lr",), lambda v: v == AUTO_LR or not isinstance(v, str) and 0 < v < math.inf,
         f"must be {AUTO_LR} or a finite number > 0"),
        (("decay_rate", "dist_timeout", "ddp_bucket_mb"), lambda v: 0 < v < math.inf, "must be a finite number > 0"),
        (("weight_decay", "momentum", "clip_grad", "mixup", "cutmix", "warmup_epochs"), lambda v: 0 <= v < math.inf,
         "must be a finite number >= 0"),
        (("max_bad_fraction", "drop_path_rate", "ema_decay"), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        (("crop_scale",), lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        (("seed",), lambda v: 0 <= v < 2**64, "must be in [0, 2**64)"),  # torch.manual_seed's range
        (("img_size",), lambda v: v is None or v >= 1, "must be >= 1"),
        (("val_fraction",), lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
        (("layer_decay",), lambda v: v is None or 0.0 < v <= 1.0, "must be in (0, 1]"),
    ]
    for keys, ok, what in rules:
        for key in keys:
            if not ok(getattr(cfg, key)):
                raise ConfigError(f"{key.replace('_', '-')} {what}, got {getattr(cfg, key)}")
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in cfg.decay_milestones):
        raise ConfigError(f"decay-milestones must be epoch numbers >= 1, got {cfg.decay_milestones}")
    if cfg.pretrained is not None and not str(cfg.pretrained).strip():  # an unset shell variable, most likely
        raise ConfigError("pretrained is empty: give weights, or leave the option out to train from scratch")
    if cfg.name is not None and (not cfg.name.strip(". ") or Path(cfg.name).name != cfg.name):
        raise ConfigError(f"name {cfg.name!r} must be a folder name, without '/'")


def _check_combinations(cfg: TrainConfig) -> None:
    """Options that exclude or need each other."""
    augments = cfg.auto_augment not in (None, "none") or cfg.random_erasing > 0
    rules = [
        (cfg.dataset in ("folder", "csv") and not cfg.data_dir, f"dataset={cfg.dataset} needs --data-dir"),
        (cfg.in_memory and augments, "--in-memory augments with crop and flip only; drop --auto-augment/"
                                     "--random-erasing or --in-memory"),
        (cfg.decode_on_device and (cfg.in_memory or augments),
         "--decode-on-device augments with crop and flip only, and not with --in-memory"),
        (cfg.decode_on_device and cfg.dataset not in ("folder", "csv"),
         "--decode-on-device reads image files: use it with --data-dir (a folder or CSV)"),
        (cfg.compile_mode != "default" and not cfg.compile,
         f"--compile-mode {cfg.compile_mode} chooses how --compile compiles: add --compile"),
        # the first backward of a cycle would put the gradients in memory the next graph replay reuses
        (cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and cfg.accum_steps > 1,
         f"--compile-mode {cfg.compile_mode} (CUDA graphs) cannot accumulate gradients: drop --accum-steps or use "
         f"--compile-mode default"),
        # torch's reducer asserts on the first no_sync backward in static-graph mode and, past that, stops
        # all-reducing (pytorch/pytorch#187732, open)
        (cfg.head_epochs and cfg.freeze_backbone,
         "--freeze-backbone trains only the classifier throughout: drop --head-epochs (or --freeze-backbone)"),
        (cfg.head_epochs >= cfg.epochs, f"--head-epochs {cfg.head_epochs} leaves no epoch of --epochs {cfg.epochs} "
                                        f"to train the whole model: lower it (or use --freeze-backbone)"),
        (cfg.layer_decay not in (None, 1.0) and cfg.freeze_backbone,
         "--layer-decay slows the backbone, which --freeze-backbone does not train: drop one"),
        # the step after the head epochs gives gradients to parameters that had none before
        (cfg.head_epochs and cfg.ddp_static_graph,
         "--ddp-static-graph needs the same parameters trained every step, --head-epochs changes them: drop one"),
        (cfg.ddp_static_graph and cfg.accum_steps > 1,
         "--ddp-static-graph cannot accumulate gradients (DDP's static graph breaks under no_sync): drop "
         "--accum-steps or --ddp-static-graph"),
    ]
    for broken, message in rules:
        if broken:
            raise ConfigError(message)


@dataclass
class Recorded:
    """What a run's config.yaml records beside the options: what this machine made of them, not options.
    Reading the file back with `-c` drops these keys, so a run's own config.yaml starts the same run again."""

    resolved_device: str
    resolved_amp: str
    resolved_channels_last: bool
    world_size: int
    global_batch: int
    resolved_lr: float
    elastic_run_id: str | None  # torchrun's job id: a restarted attempt finds its run by it
    recipe_choices: str = ""  # what --recipe auto chose, as printed at the start


RECORDED_KEYS = tuple(f.name for f in dataclasses.fields(Recorded))


def make_config(overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from keyword overrides; unknown keys are an error listing the valid ones."""
    return from_options(TrainConfig, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`-c` and one flag per TrainConfig field (`--batch-size`, `--no-compile`, ...), in their groups."""
    parser.add_argument("-c", "--config", metavar="FILE.yaml",
                        help="options as YAML (a run's own config.yaml works); flags given here override it")
    add_options(parser, TrainConfig, GROUPS)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, in the YAML file or as flags (flags win): exactly these, since a flag
    left out is absent from `args` (default=SUPPRESS). A resume needs to know which were given: a flag
    that repeats its default (`--epochs 8`) is still a request."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    if "recipe" not in values and "resolved_lr" in values:
        # a run's config.yaml from before --recipe: its options were the whole recipe, and are the run again
        values["recipe"] = "imagenet"
    values = {k: v for k, v in values.items() if k not in RECORDED_KEYS}
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    return {**values, **flags}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return make_config(overrides_from_args(args))

