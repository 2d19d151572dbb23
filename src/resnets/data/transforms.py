"""Preprocessing built from a model's pretrained_cfg (input_size, mean, std, crop_pct, interpolation).

Small images (<= 64 px: CIFAR, digits) train with pad-crop-flip as in the CIFAR papers; larger ones with
RandomResizedCrop + flip (Inception-style, as torchvision/timm). Evaluation resizes by crop_pct and
center-crops. Inputs may be PIL images or uint8 tensors (C, H, W).

With `normalize=False` the transforms end in uint8 and `DeviceNormalize` finishes the batch where the model
runs: loader workers then skip the float conversion and hand over a quarter of the bytes, which is what
limits a fast GPU's input pipeline (BENCHMARKS.md, "Input pipeline, ResNet-50 training from a folder of JPEGs").
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2

from ..device import to_device
from ..errors import ConfigError
from ..models.pretrained_cfg import INTERPOLATIONS, PretrainedCfg

SMALL_IMAGE = 64  # at or below this, RandomResizedCrop destroys too much: use pad-crop instead
INTERPOLATION = {name: v2.InterpolationMode(name) for name in INTERPOLATIONS}
AUTO_AUGMENT = {None: None, "none": None, "rand": lambda: v2.RandAugment(), "trivial": lambda: v2.TrivialAugmentWide()}


class CapAspect(v2.Transform):
    """Center-crop the long side to at most `max_ratio` x the short side.

    Resizing the short side first and center-cropping after keeps only the middle of a very thin image
    anyway, but builds the whole resized strip on the way: a 1 x 5,000 scan becomes a 224 x 1,120,000
    intermediate (~750 MB). Cropping first keeps a margin of half the short side around the part that
    survives, wider than the resize filter reaches, so the result is the same."""

    def __init__(self, max_ratio: float = 2.0):
        super().__init__()
        self.max_ratio = max_ratio

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = v2.functional.get_size(inpt)
        cap = lambda long, short: min(long, max(1, int(self.max_ratio * short)))  # noqa: E731
        if max(height, width) <= self.max_ratio * min(height, width):
            return inpt
        return v2.functional.center_crop(inpt, [cap(height, width), cap(width, height)])


class MatchChannels(v2.Transform):
    """Images are decoded as RGB; a model with another number of input channels (in_chans) gets them so:
    one channel as luma (ITU-R 601, PIL's "L"), more as the RGB channels repeated (how its first conv was
    adapted from RGB weights)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.shape[-3] == self.channels:
            return inpt
        if self.channels == 1:
            return v2.functional.rgb_to_grayscale(inpt)
        return inpt[..., [i % inpt.shape[-3] for i in range(self.channels)], :, :]


def _channels(pretrained_cfg: PretrainedCfg) -> list[v2.Transform]:
    return [MatchChannels(pretrained_cfg.input_size[0])] if pretrained_cfg.input_size[0] != 3 else []


def image_size(pretrained_cfg: PretrainedCfg, img_size: int | None = None) -> int:
    return int(pretrained_cfg.input_size[-1] if img_size is None else img_size)


def _to_normalized(pretrained_cfg: PretrainedCfg) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pretrained_cfg.mean), list(pretrained_cfg.std))]


class DeviceNormalize:
    """uint8 (B, C, H, W) batches from `normalize=False` transforms -> normalised float32 on their device,
    in the model's memory format. Float batches (normalised by their transform) pass as they are."""

    def __init__(self, pretrained_cfg: PretrainedCfg, channels_last: bool = False):
        self.scale = 255.0 * torch.tensor(pretrained_cfg.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.shift = 255.0 * torch.tensor(pretrained_cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return self.pixels(images.to(torch.float32, memory_format=self.memory_format))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise, in place, a float batch of pixel values on the 0-255 scale (a crop of uint8 images)."""
        if self.scale.device != x.device:
            self.scale, self.shift = to_device(self.scale, x.device), to_device(self.shift, x.device)
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std): no separate /255 pass over the batch
        return x.sub_(self.shift).div_(self.scale)


def train_transform(pretrained_cfg: PretrainedCfg, img_size: int | None = None, hflip: float = 0.5,
                    auto_augment: str | None = None, random_erasing: float = 0.0, normalize: bool = True,
                    crop_scale: float = 0.08) -> v2.Compose:
    """Training augmentation. `auto_augment`: None, "rand" (RandAugment) or "trivial" (TrivialAugmentWide).
    `crop_scale`: the smallest share of the image's area a RandomResizedCrop keeps (ImageNet's 0.08).
    `normalize=False`: end in uint8, for `DeviceNormalize` (random erasing needs the normalised image)."""
    if auto_augment not in AUTO_AUGMENT:
        raise ConfigError(f"auto_augment {auto_augment!r} is not one of none, rand, trivial")
    if random_erasing > 0 and not normalize:
        raise ConfigError("random erasing works on normalised images: it needs normalize=True")
    size = image_size(pretrained_cfg, img_size)
    interp = INTERPOLATION[pretrained_cfg.interpolation]
    ops: list[Any] = [v2.ToImage(), *_channels(pretrained_cfg)]
    if size <= SMALL_IMAGE:
        ops += [CapAspect(), v2.Resize(size, interpolation=interp, antialias=True), v2.CenterCrop(size),
                v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect")]
    else:
        ops += [v2.RandomResizedCrop(size, scale=(crop_scale, 1.0), interpolation=interp, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if AUTO_AUGMENT[auto_augment] is not None:
        ops.append(AUTO_AUGMENT[auto_augment]())
    if normalize:
        ops += _to_normalized(pretrained_cfg)
    if random_erasing > 0:
        ops.append(v2.RandomErasing(random_erasing))
    return v2.Compose(ops)


def eval_transform(pretrained_cfg: PretrainedCfg, img_size: int | None = None, normalize: bool = True) -> v2.Compose:
    """Resize the short side to size / crop_pct, center-crop `size`, normalise (or, with `normalize=False`,
    stay uint8 for `DeviceNormalize`)."""
    size = image_size(pretrained_cfg, img_size)
    crop_pct = pretrained_cfg.crop_pct
    resize = int(math.floor(size / crop_pct)) if crop_pct > 0 else size
    return v2.Compose([v2.ToImage(), *_channels(pretrained_cfg), CapAspect(),
                       v2.Resize(resize, interpolation=INTERPOLATION[pretrained_cfg.interpolation], antialias=True),
                       v2.CenterCrop(size), *(_to_normalized(pretrained_cfg) if normalize else [])])
