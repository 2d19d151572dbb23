"""`--recipe auto`: the training recipe chosen from what is known before the first step.

TrainConfig's own defaults are ImageNet's recipe (SGD at 0.1, Inception crops down to 8% of the image, one
warm-up epoch), made for 90 epochs over 1.3 M photos at 224 px. Most folders hold hundreds to thousands of images,
often far smaller than the model's input, trained for minutes. `choose_recipe` looks at the data (images, classes,
their typical size, how uneven the classes are), the model (its input size, pretrained or not) and the run (epochs,
batch, processes) and picks the options the user left alone; every option given (a flag, a YAML key) wins.
`--recipe imagenet` keeps the defaults as they are.

Each choice below says where it comes from: a paper or a reference recipe, or our own measurement
(BENCHMARKS.md, "Time to accuracy on small folders").
"""
from __future__ import annotations

import dataclasses
import math
import os
import stat
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import numpy as np
from PIL import Image

from ..data.datasets import DataSplits, ImageFiles, TensorImages
from ..data.transforms import SMALL_IMAGE
from .config import TrainConfig

SIZE_SAMPLE = 64  # image headers read to learn the data's typical size: a few ms, whatever the folder's size


@dataclass(frozen=True)
class DataFacts:
    """What the recipe knows of the data before training."""

    train_images: int
    num_classes: int
    image_side: int | None  # median short side of a sample of the training images; None: not known
    imbalance: float  # largest class over smallest class, in training images
    decoded: bool = False  # the images are tensors in memory already (the digits, CIFAR), not files

    @classmethod
    def of(cls, splits: DataSplits) -> "DataFacts":
        counts = np.bincount(splits.train_labels, minlength=len(splits.class_names))
        return cls(train_images=len(splits.train), num_classes=len(splits.class_names),
                   image_side=typical_side(splits.train),
                   imbalance=float(counts.max() / max(counts.min(), 1)) if len(counts) else 1.0,
                   decoded=getattr(splits.train, "samples", None) is None)


@dataclass
class Recipe:
    """The options chosen (only those the user left alone) and one short reason for the record."""

    name: str
    choices: dict[str, Any] = field(default_factory=dict)
    basis: str = ""  # what the choices were made from, e.g. "1,442 images of ~32 px, from scratch, 5 epochs"

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        return dataclasses.replace(cfg, **self.choices)

    def summary(self) -> str:
        """One line for the log and config.yaml."""
        if not self.choices:
            return f"recipe {self.name}: the options as given"
        shown = ", ".join(f"{key.replace('_', '-')} {_brief(value)}" for key, value in self.choices.items())
        return f"recipe {self.name} ({self.basis}): {shown}"


def _brief(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)


def typical_side(dataset: Any) -> int | None:
    """Median short side of up to SIZE_SAMPLE training images, evenly spread over the list (deterministic, so
    every process of a run sees the same). Only headers are read, and only of regular files: a FIFO or a
    device in the folder must not block the start (data/images.read_bytes says why)."""
    if isinstance(dataset, TensorImages):
        return int(min(dataset.images.shape[-2:]))
    if getattr(dataset, "data", None) is not None and hasattr(dataset, "classes"):  # torchvision's CIFAR
        return int(min(np.asarray(dataset.data).shape[1:3]))
    if not isinstance(dataset, ImageFiles) or not dataset.samples:
        return None
    step = max(1, len(dataset.samples) // SIZE_SAMPLE)
    sides = []
    for path, _ in dataset.samples[::step][:SIZE_SAMPLE]:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            with Image.open(path) as image:  # lazy: the size is in the header
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # an unreadable file: the loaders list it; here it just does not count
    return int(median(sides)) if sides else None


def choose_recipe(cfg: TrainConfig, explicit: set[str], facts: DataFacts, input_side: int, pretrained: bool,
                  world_size: int = 1) -> Recipe:
    """The options `--recipe auto` sets for this data, model and run, except those in `explicit`.

    Args:
        input_side: the model's own input size (its default pretrained_cfg), before --img-size.
        pretrained: fine-tuning from --pretrained weights rather than training from scratch.
        world_size: processes of the run; the lr follows the global batch.
    """
    if cfg.recipe != "auto":
        return Recipe(cfg.recipe)
    want: dict[str, Any] = {}
    side = facts.image_side
    if "img_size" not in explicit and side is not None and side < input_side:
        want["img_size"] = training_side(side, input_side, pretrained)
    batch = cfg.batch_size if "batch_size" in explicit else small_data_batch(facts.train_images, world_size)
    want["batch_size"] = batch
    steps_per_epoch = max(1, facts.train_images // (batch * world_size * cfg.accum_steps))
    total_steps = steps_per_epoch * cfg.epochs
    global_batch = batch * world_size * cfg.accum_steps
    opt = cfg.opt if "opt" in explicit else "nesterov"
    want.update(optimizer_settings(opt, pretrained, cfg, global_batch, explicit))
    # Warm-up: ImageNet's 5 epochs (Goyal et al. 2017) are for batches of 8k; what matters is the number of steps
    # at a low lr while BN statistics and momentum settle. ~100 steps, at most a tenth of the run.
    want["warmup_epochs"] = round(min(1.0, 100 / steps_per_epoch, 0.1 * cfg.epochs), 3)
    want.update(augmentation(facts, cfg, pretrained, want.get("img_size", cfg.img_size or input_side)))
    # Label smoothing 0.1 (Szegedy et al. 2016; torchvision's and timm's recipes) helps once there are enough
    # classes to spread over; on 2-3 classes it only blurs the target.
    want["label_smoothing"] = 0.1 if facts.num_classes >= 5 else 0.0
    want["ema_decay"] = ema_decay(total_steps)
    if batch_crops_fit(facts, cfg, want, explicit, want.get("img_size", cfg.img_size or input_side)):
        want["in_memory"] = True
    if pretrained and not cfg.freeze_backbone:
        want.update(fine_tuning(cfg))
    chosen = {key: value for key, value in want.items() if key not in explicit and getattr(cfg, key) != value}
    basis = (f"{facts.train_images:,} images{f' of ~{side} px' if side else ''}, {facts.num_classes} classes, "
             f"{'fine-tuning' if pretrained else 'from scratch'}, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''}")
    return Recipe("auto", chosen, basis)


def training_side(side: int, input_side: int, pretrained: bool) -> int:
    """Train small images near their own size rather than blown up to the model's: an 8x upscale of a 28 px
    image adds no detail, and costs 64x the compute. From scratch: the image's side rounded up to a multiple of
    32 (the stride of an ImageNet-style net's last stage), at least 64 for those nets so their last stage
    keeps 2x2 pixels. Pretrained weights learnt their filters on objects at ~224 px: at least half of that."""
    rounded = 32 * math.ceil(side / 32)
    floor = 64 if input_side > SMALL_IMAGE else 32
    if pretrained:
        floor = max(floor, input_side // 2)
    return min(input_side, max(floor, rounded))


def small_data_batch(train_images: int, world_size: int) -> int:
    """The default batch (64 per process) unless the data is small: then at least ~40 steps per epoch, since a
    short run on little data is limited by the number of updates, not by the throughput of each (batch 16-32 on
    a few hundred images beat 64 in our measurements)."""
    per_process = train_images / (40 * world_size)
    return int(min(64, max(16, 2 ** math.floor(math.log2(max(per_process, 1))))))


def optimizer_settings(opt: str, pretrained: bool, cfg: TrainConfig, global_batch: int,
                       explicit: set[str]) -> dict[str, Any]:
    """SGD with Nesterov momentum unless another optimizer was given, its lr scaled linearly with the batch (Goyal
    et al. 2017): 0.4 per 256 images, twice the CIFAR ResNet paper's 0.1 per 128 (He et al. 2016), which is for
    160 epochs; in 5-epoch runs on the digits folders 0.025, 0.05 and 0.1 at batch 32 gave 98.9, 99.4 and 99.7%
    (two seeds each). AdamW's per 256 images is 1e-3 (DeiT's 5e-4 per 512, Touvron et al. 2021). Fine-tuning
    keeps the same lr: a tenth of it, the usual advice, cost 25-30 points of top-1 when fine-tuning digits 0-4
    weights on 10 images per class of 5-9 (BENCHMARKS.md, "Fine-tuning"). With --scale-lr the trainer scales
    --lr itself: the lr is then the one for --lr-base-batch."""
    adaptive = opt in ("adam", "adamw")
    per_256 = 1e-3 if adaptive else 0.4
    batch = cfg.lr_base_batch if "scale_lr" in explicit and cfg.scale_lr != "none" else global_batch
    # Decoupled (AdamW) decay is a share of the weights per step times the lr; SGD's L2 5e-4 is CIFAR's.
    return {"opt": opt, "lr": float(f"{per_256 * batch / 256:.3g}"),
            "weight_decay": {"adamw": 0.05, "adam": 0.0}.get(opt, 5e-4)}


def augmentation(facts: DataFacts, cfg: TrainConfig, pretrained: bool, train_side: int) -> dict[str, Any]:
    """How strongly to augment. Augmentation is a regulariser: it pays once a model would otherwise overfit,
    which takes epochs (Steiner et al. 2021, "How to train your ViT": the same augmentation that helps in long
    runs hurts in short ones). Few epochs: crops that keep most of the image; many: ImageNet's full range plus
    TrivialAugment and erasing where the data is large enough to train them."""
    long_run = cfg.epochs >= 30
    out: dict[str, Any] = {}
    if train_side > SMALL_IMAGE:  # smaller images are padded and cropped (transforms.py), not resized
        out["crop_scale"] = 0.08 if long_run else (0.25 if cfg.epochs >= 10 else 0.35)
    batch_augment = cfg.in_memory or cfg.decode_on_device  # crop and flip only there
    if long_run and train_side > SMALL_IMAGE and facts.train_images >= 5_000 and not pretrained and not batch_augment:
        out.update(auto_augment="trivial", random_erasing=0.25)
    return out


def batch_crops_fit(facts: DataFacts, cfg: TrainConfig, want: dict[str, Any], explicit: set[str],
                    train_side: int) -> bool:
    """Crop and flip whole batches on the device (--in-memory) where the images are tensors in memory already
    and small enough to be padded and cropped: the same augmentation as per image, without a Python call per
    image in the training process (on the digits that cost ~25% of a bare loop's speed, trainer_overhead.py).
    Files are left to the loader workers: --in-memory would decode them into a cache on disk."""
    augments = [want.get(k, getattr(cfg, k)) if k not in explicit else getattr(cfg, k)
                for k in ("auto_augment", "random_erasing")]
    plain = augments[0] in (None, "none") and not augments[1] and not cfg.decode_on_device
    return facts.decoded and plain and train_side <= SMALL_IMAGE and "in_memory" not in explicit


def ema_decay(total_steps: int) -> float:
    """An EMA of the weights (timm's recipes) pays in runs long enough for its average to forget the start: its
    horizon 1 / (1 - decay) set to a tenth of the run, between 0.99 and 0.9999; off below 2,000 steps, where the
    average would still hold the early weights at the end (measured: it lowered short runs' top-1)."""
    if total_steps < 2_000:
        return 0.0
    return float(min(0.9999, max(0.99, 1 - 10 / total_steps)))


def fine_tuning(cfg: TrainConfig) -> dict[str, Any]:
    """Train the new head alone for the first ~15% of the epochs, so that its random gradients do not wreck the
    pretrained features (Kumar et al. 2022, "Fine-tuning can distort pretrained features": linear probe, then
    fine-tune); measured on digits 0-4 weights fine-tuned on 10 images per class of 5-9 (six seeds), 2-4 head
    epochs of 20 raised the worst seed's top-1 by 3 points without lowering the mean. Layer-wise lr decay
    (--layer-decay, as in BEiT's and timm's fine-tuning) stays off: 0.7 lowered the mean by 1-7 points there."""
    head = max(1, round(0.15 * cfg.epochs)) if cfg.epochs >= 3 and not cfg.ddp_static_graph else 0
    return {"head_epochs": head} if head else {}
