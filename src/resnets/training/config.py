"""The one typed configuration of `resnets train`: defaults < YAML file (-c) < command-line flags."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..caches import COMPILE_MODES, CUDA_GRAPH_MODES
from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Everything a training run depends on. The resolved copy is written to the run's config.yaml.

    The defaults are the embedded demo: the scikit-learn handwritten digits (1,797 8x8 images, upscaled to
    32x32) on a CIFAR ResNet-20, about two minutes on two CPU cores.
    """

    # data
    dataset: str = "digits"  # folder (ImageFolder), csv, digits, cifar10, cifar100
    data_dir: str | None = None  # folder / CSV file / CIFAR root; a folder implies dataset=folder
    val_fraction: float = 0.2  # held out (stratified, seeded) when the data has no val/ or test/ split
    download: bool = False  # CIFAR only
    max_bad_fraction: float = 0.01  # unreadable images allowed (skipped, in bad_files.csv); a larger share stops the run
    # model
    model: str = "cifar_resnet20"
    pretrained: str | None = None  # weights to fine-tune from; a head of another size is re-initialised
    remap_classes: bool = False  # allow a pretrained checkpoint with other classes than the data: its head is reset
    num_classes: int | None = None  # taken from the data; if given it must agree
    freeze_backbone: bool = False  # train only the classifier
    img_size: int | None = None  # default: the model's input size
    drop_path_rate: float = 0.0
    # optimisation
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    opt: str = "sgd"  # sgd, nesterov, adamw, adam
    momentum: float = 0.9
    sched: str = "cosine"  # cosine, step, multistep, constant
    warmup_epochs: float = 1.0  # linear warm-up from lr/100
    decay_epochs: int = 30  # step schedule: decay every N epochs
    decay_milestones: list[int] = dataclasses.field(default_factory=lambda: [30, 60, 90])  # multistep
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of MixUp; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 = off
    ema_decay: float = 0.0  # EMA of weights, e.g. 0.999; 0 = off. Validation and best.safetensors use the EMA.
    accum_steps: int = 1  # gradient accumulation
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    imbalance: str = "none"  # none, weights (class-weighted loss), sampler (balanced sampling)
    patience: int = 0  # early stopping after N epochs without a better val top-1; 0 = off
    # augmentation
    hflip: float | None = None  # default 0.5, and 0 for digits (a mirrored 2 is not a 2)
    auto_augment: str | None = None  # rand (RandAugment), trivial (TrivialAugmentWide)
    random_erasing: float = 0.0
    # runtime
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU), bf16, fp16, off
    channels_last: bool | None = None  # default: on CUDA
    compile: bool = False
    compile_mode: str = "default"  # with --compile: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs
    in_memory: bool = False  # decode the training images once into a uint8 tensor on the device and crop/flip whole batches there: no DataLoader (data that fits in memory)
    decode_on_device: bool = False  # JPEG folders: workers only read bytes; the device decodes them (nvJPEG on a GPU) and crops/flips whole batches
    cache_dir: str | None = None  # where --in-memory keeps decoded folders (keyed by the files' paths, sizes and times) and --compile its caches (default ~/.cache/resnets)
    workers: int | None = None  # data-loading processes; default 0 for in-memory data (digits), else the cores (at most 16 feeding a GPU, 8 on the CPU)
    seed: int = 0
    output: str = "runs"
    name: str | None = None  # run directory name (default: time and model)
    resume: str | None = None  # "auto" (newest run under --output), a run directory or a checkpoint-*.pt
    checkpoint_every: int = 0  # also save the resume state every N optimizer steps (0: at each epoch's end)
    keep_checkpoints: int = 2  # resume states kept per run (best.safetensors is kept apart, always)
    skip_nonfinite: int = 0  # skip up to N steps with a non-finite loss in a row instead of stopping the run
    deterministic: bool = False  # deterministic kernels only: identical weights from identical runs
    log_tensorboard: bool = False
    progress: bool = True  # tqdm bars (shown only on a terminal)
    # several processes (torchrun); batch-size is per process
    sync_bn: bool = False  # BatchNorm statistics over the global batch (GPUs only)
    scale_lr: str = "none"  # none, linear, sqrt: take --lr as the rate for --lr-base-batch and scale it to the global batch (batch-size x processes x accum-steps)
    lr_base_batch: int = 256  # the batch --lr is meant for, with --scale-lr
    dist_timeout: float = 600.0  # seconds a process waits for the others in a collective before the job fails
    ddp_bucket_mb: float = 25.0  # size of DDP's gradient all-reduce buckets
    ddp_static_graph: bool = False  # DDP static_graph: the same parameters get gradients in every step (lets DDP skip per-step bookkeeping)

    def resolved(self) -> "TrainConfig":
        """Fill the 'auto' fields that do not depend on the machine."""
        cfg = dataclasses.replace(self)
        if cfg.data_dir and cfg.dataset == "digits":
            path = Path(cfg.data_dir)
            cfg.dataset = "csv" if path.suffix.lower() == ".csv" else "folder"
        if cfg.workers is None and cfg.dataset == "digits":
            # Worker processes only pay off when there are files to decode; on in-memory tensors they
            # just compete with the training threads (digits on 2 cores: 268 img/s with 0, 211 with 2).
            cfg.workers = 0
        if cfg.hflip is None:
            cfg.hflip = 0.0 if cfg.dataset == "digits" else 0.5
        cfg.validate()
        return cfg

    def validate(self) -> None:
        choices = {"dataset": ("folder", "csv", "digits", "cifar10", "cifar100"), "opt": tuple(OPTIMIZERS),
                   "sched": ("cosine", "step", "multistep", "constant"), "amp": ("auto", "bf16", "fp16", "off"),
                   "imbalance": ("none", "weights", "sampler"), "scale_lr": ("none", "linear", "sqrt"),
                   "auto_augment": (None, "none", "rand", "trivial"), "compile_mode": COMPILE_MODES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                shown = ", ".join(str(a) for a in allowed if a is not None)
                raise ConfigError(f"{key.replace('_', '-')}={getattr(self, key)!r} is not one of {shown}")
        positive = ["epochs", "batch_size", "accum_steps", "keep_checkpoints", "lr_base_batch"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.decay_epochs < 1:
            raise ConfigError(f"decay-epochs must be >= 1, got {self.decay_epochs}")
        for key in ("hflip", "random_erasing", "label_smoothing"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key.replace('_', '-')} must be in [0, 1], got {value}")
        if not 0 < self.lr < math.inf:  # nan fails this too
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        for key in ("weight_decay", "momentum", "clip_grad", "mixup", "cutmix", "warmup_epochs"):
            if not 0 <= getattr(self, key) < math.inf:  # nan fails this too: a nan warm-up trained at lr 0
                raise ConfigError(f"{key.replace('_', '-')} must be a finite number >= 0, got {getattr(self, key)}")
        if not 0 <= self.seed < 2**64:  # torch.manual_seed's range
            raise ConfigError(f"seed must be in [0, 2**64), got {self.seed}")
        if not 0 < self.decay_rate < math.inf:
            raise ConfigError(f"decay-rate must be a finite number > 0, got {self.decay_rate}")
        if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in self.decay_milestones):
            raise ConfigError(f"decay-milestones must be epoch numbers >= 1, got {self.decay_milestones}")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"img-size must be >= 1, got {self.img_size}")
        if self.name is not None and (not self.name.strip(". ") or Path(self.name).name != self.name):
            raise ConfigError(f"name {self.name!r} must be a folder name, without '/'")
        if min(self.workers or 0, self.patience, self.checkpoint_every, self.skip_nonfinite) < 0:
            raise ConfigError("workers, patience, checkpoint-every and skip-nonfinite must be >= 0")
        if self.dataset in ("folder", "csv") and not self.data_dir:
            raise ConfigError(f"dataset={self.dataset} needs --data-dir")
        if not 0.0 <= self.max_bad_fraction < 1.0:
            raise ConfigError(f"max-bad-fraction must be in [0, 1), got {self.max_bad_fraction}")
        if self.in_memory and (self.auto_augment not in (None, "none") or self.random_erasing > 0):
            raise ConfigError("--in-memory augments with crop and flip only; drop --auto-augment/--random-erasing "
                              "or --in-memory")
        if self.decode_on_device and (self.in_memory or self.auto_augment not in (None, "none")
                                      or self.random_erasing > 0):
            raise ConfigError("--decode-on-device augments with crop and flip only, and not with --in-memory")
        if self.decode_on_device and self.dataset not in ("folder", "csv"):
            raise ConfigError("--decode-on-device reads image files: use it with --data-dir (a folder or CSV)")
        if not (0 < self.dist_timeout < math.inf and 0 < self.ddp_bucket_mb < math.inf):
            raise ConfigError("dist-timeout and ddp-bucket-mb must be finite numbers > 0")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"--compile-mode {self.compile_mode} chooses how --compile compiles: add --compile")
        if self.compile and self.compile_mode in CUDA_GRAPH_MODES and self.accum_steps > 1:
            # the first backward of a cycle would put the gradients in memory the next graph replay reuses
            raise ConfigError(f"--compile-mode {self.compile_mode} (CUDA graphs) cannot accumulate gradients: "
                              f"drop --accum-steps or use --compile-mode default")
        if self.ddp_static_graph and self.accum_steps > 1:
            # torch's reducer asserts on the first no_sync backward in static-graph mode and, past that, stops
            # all-reducing (pytorch/pytorch#187732, open)
            raise ConfigError("--ddp-static-graph cannot accumulate gradients (DDP's static graph breaks under "
                              "no_sync): drop --accum-steps or --ddp-static-graph")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop-path-rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema-decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


def default_workers(device_type: str) -> int:
    """Loader processes when -j is not given. Feeding a GPU: every core of this process's share, at most 16
    (on the 16-core H100 machine, 16 workers decoded and augmented about 11,000 JPEGs/s, about 690 each; 8
    at that rate, about 5,500, would be fewer than the compiled ResNet-50 step's 5,700 img/s). Training on the
    CPU: at most 8, since every worker takes a core from the training threads. Under torchrun the node's cores
    are shared by its LOCAL_WORLD_SIZE processes."""
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16 if device_type == "cuda" else 8, cores))


OPTIMIZERS = ("sgd", "nesterov", "adamw", "adam")
SHORT_FLAGS = {"batch_size": "-b", "workers": "-j"}


# What a run's config.yaml records beside the options (trainer.py): outcomes of the run, not options. Reading
# the file back with `-c` drops them, so a run's own config.yaml starts the same run again.
RECORDED_KEYS = ("resolved_device", "resolved_amp", "resolved_channels_last", "world_size", "global_batch",
                 "resolved_lr", "elastic_run_id")


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    return {key: v for k, v in data.items() if (key := str(k).replace("-", "_")) not in RECORDED_KEYS}


def make_config(overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from keyword overrides; unknown keys are an error listing the valid ones."""
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    hints = typing.get_type_hints(TrainConfig)
    values = {key: _coerce(value, hints[key]) for key, value in overrides.items()}
    for key, value in values.items():
        _check_type(key, value, hints[key])
    return TrainConfig(**values)


def _coerce(value: Any, hint: Any) -> Any:
    """Undo YAML's guesses: `amp: off` arrives as False and `lr: 1e-3` as a string."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, bool) and str in allowed and bool not in allowed:
        return "on" if value else "off"
    if isinstance(value, str) and str not in allowed:
        for number in (int, float):
            if number in allowed:
                try:
                    return number(value)
                except ValueError:
                    pass
    return value


def _check_type(key: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)
    if value is None and type(None) in allowed:
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = "/".join("null" if a is type(None) else a.__name__ for a in allowed)
        raise ConfigError(f"option {key}: expected {names}, got {value!r}")


def field_comments() -> dict[str, str]:
    """The comment after each field of TrainConfig: the one place an option is documented."""
    comments = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--batch-size`, `--no-compile`, ...), defaults left to the dataclass."""
    parser.add_argument("-c", "--config", help="YAML file of options; flags given here override it")
    hints = typing.get_type_hints(TrainConfig)
    comments = field_comments()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [SHORT_FLAGS[f.name], flag] if f.name in SHORT_FLAGS else [flag]
        hint = hints[f.name]
        # list[int] is a type of its own; `int | None` stands for its non-None member
        base = hint if typing.get_origin(hint) is list else [a for a in typing.get_args(hint) or (hint,)
                                                                if a is not type(None)][0]
        default = getattr(defaults, f.name)
        help_text = comments.get(f.name, "").replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                      help=f"{help_text} [default: {default}]" if help_text else f"[default: {default}]")
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kwargs.update(type=int, nargs="+")
        else:
            kwargs["type"] = base
        parser.add_argument(*names, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, in the YAML file or as flags (flags win): exactly these, since a flag
    left out is absent from `args` (default=SUPPRESS). A resume needs to know which were given: a flag
    that repeats its default (`--epochs 8`) is still a request."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    return {**values, **flags}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return make_config(overrides_from_args(args))
