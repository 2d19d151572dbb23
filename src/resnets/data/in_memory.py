"""Training images held on the training device as uint8 and augmented there a whole batch at a time.

For data that fits in device memory (digits, CIFAR, a folder of some thousands of photos): each image is
decoded once, resized to a fixed square "store" size, and kept in one (N, C, S, S) uint8 tensor. A batch is
then an index into that tensor plus a few batched ops (crop, flip, normalise) on the device: no DataLoader,
no worker processes, no host-to-device copy per step. Folders are decoded once into a cache file keyed by
the files' paths, sizes and modification times, so any change to the data builds a new one. The file is
not trusted as it loads: it must hold what it was built for (see `store_mismatch`), else it is rebuilt.

Augmentation matches the file pipeline (transforms.py) for small images (reflect-pad, random crop, flip);
for larger ones RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) samples from the stored center square of
side size / crop_pct rather than from the whole original image. Randomness comes from a generator seeded
by (seed, epoch, batch position, rank): a resumed run draws the same crops.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2

from ..caches import default_cache_dir
from ..device import to_device
from ..errors import ConfigError
from ..fileio import atomic_write_to
from ..messages import one_line, warn
from ..models.pretrained_cfg import PretrainedCfg
from .loader_workers import own_process_group
from .bad_files import BadFiles, collate_skipping
from .images import MAX_IMAGE_BYTES
from .transforms import INTERPOLATION, SMALL_IMAGE, DeviceNormalize, image_size

# Part of every cache key: a change of how images are stored invalidates old caches. 2: the file records its
# key and the digest of its images, checked on load.
STORE_FORMAT = 2


def store_size(pretrained_cfg: PretrainedCfg, img_size: int | None = None) -> int:
    """Side of the stored squares: the training size for small images (pad-crop), else size / crop_pct."""
    size = image_size(pretrained_cfg, img_size)
    return size if size <= SMALL_IMAGE else int(math.floor(size / pretrained_cfg.crop_pct))


@dataclass
class ImageStore:
    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    broken: dict[str, str]  # files that did not decode (not in `images`), with the reason

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "ImageStore":
        return ImageStore(self.images.to(device), self.labels.to(device), self.broken)


def build_store(dataset: Dataset, side: int, pretrained_cfg: PretrainedCfg, workers: int = 0) -> ImageStore:
    """Decode every item of `dataset` (an ImageFiles or TensorImages) once, at `side` x `side`."""
    stored = copy.copy(dataset)  # the same items, stored rather than augmented
    resize = v2.Resize(side, interpolation=INTERPOLATION[pretrained_cfg.interpolation], antialias=True)
    stored.transform = v2.Compose([v2.ToImage(), resize, v2.CenterCrop(side)])  # type: ignore[attr-defined]
    loader = DataLoader(stored, batch_size=256, num_workers=workers, collate_fn=collate_skipping,
                        worker_init_fn=own_process_group)
    images, labels, broken = [], [], {}
    for batch_images, batch_labels, unreadable in loader:
        broken.update({u.file: u.reason for u in unreadable})
        if len(batch_labels):
            images.append(batch_images)  # RGB: load_image converts every file, in-memory sets are RGB
            labels.append(batch_labels)
    if not images:
        raise ConfigError("no readable training image to keep in memory")
    return ImageStore(torch.cat(images).contiguous(), torch.cat(labels).long(), broken)


def cache_key(samples: list[tuple[str, int]], side: int, pretrained_cfg: PretrainedCfg,
              max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """Digest of what a stored folder depends on: every file's path, size and mtime, labels, size, resize, and
    the file size limit (a file skipped as too large may be read under a higher one)."""
    h = hashlib.sha256(json.dumps([STORE_FORMAT, side, pretrained_cfg.interpolation, max_bytes]).encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\0{label}\n".encode())
    return h.hexdigest()


def cached_store(dataset: Dataset, side: int, pretrained_cfg: PretrainedCfg, cache_dir: str | Path | None,
                 workers: int = 0) -> tuple[ImageStore, Path | None, bool]:
    """(store, cache file, whether it was built now). In-memory datasets are not cached (nothing to decode)."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return build_store(dataset, side, pretrained_cfg, workers), None, True
    key = cache_key(samples, side, pretrained_cfg, getattr(dataset, "max_bytes", MAX_IMAGE_BYTES))
    path = Path(cache_dir or default_cache_dir()) / f"store-{key[:40]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                store = ImageStore(f.get_tensor("images"), f.get_tensor("labels"),
                                   json.loads(metadata.get("broken", "{}")))
            why = store_mismatch(store, metadata, samples, side, key)
        except (SafetensorError, OSError, ValueError, KeyError, RecursionError) as e:
            why = f"unreadable: {one_line(e, 100)}"
        if why is None:
            return store, path, False
        warn(f"{path}: the --in-memory cache does not hold what it was built for ({why}); rebuilding it")
    store = build_store(dataset, side, pretrained_cfg, workers)
    metadata = {"broken": json.dumps(store.broken), "key": key, "images_sha256": images_digest(store.images)}
    atomic_write_to(path, lambda tmp: save_file({"images": store.images, "labels": store.labels}, tmp,
                                                metadata=metadata))
    return store, path, True


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the stored pixels: 1-2 s per GB on one core, a small part of what decoding them again costs,
    and the one check that finds images swapped or altered under labels that still look right."""
    return hashlib.sha256(images.contiguous().numpy()).hexdigest()


def store_mismatch(store: ImageStore, metadata: dict[str, str], samples: list[tuple[str, int]], side: int,
                   key: str) -> str | None:
    """Why a loaded cache is not the store of `samples` it claims to be, or None.

    The file name holds only part of the key, and a file can be copied, edited or damaged: out-of-range labels
    ended training in an IndexError, and swapped labels trained silently. So everything is checked against
    what the data says now: the full key, the broken files (some of the data's), the shapes, every label (the
    readable files' labels, in order, as `build_store` stores them), and the digest of the images.
    """
    if metadata.get("key") != key:
        return "it was built for other data or settings"
    broken, images, labels = store.broken, store.images, store.labels
    paths = {path for path, _ in samples}
    if not isinstance(broken, dict) or not all(isinstance(f, str) and isinstance(r, str) and f in paths
                                               for f, r in broken.items()):
        return "its list of unreadable files is not some of the data's files with reasons"
    expected = [label for path, label in samples if path not in broken]
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, side, side):
        return f"images {_dtype(images)} {tuple(images.shape)}, not uint8 (N, 3, {side}, {side})"
    if labels.dtype != torch.int64 or labels.ndim != 1:
        return f"labels {_dtype(labels)} {tuple(labels.shape)}, not int64 (N,)"
    if not len(images) == len(labels) == len(expected):
        return f"{len(images):,} images and {len(labels):,} labels for {len(expected):,} readable files"
    if labels.tolist() != expected:
        i = next(i for i, (a, b) in enumerate(zip(labels.tolist(), expected)) if a != b)
        return f"label {labels[i].item()} for item {i}, whose file is labelled {expected[i]}"
    if metadata.get("images_sha256") != images_digest(images):
        return "its images are not the ones it was built with"
    return None


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class DeviceAugment:
    """Crop, flip and normalise a (B, C, S, S) uint8 batch on its device; returns float32 (B, C, size, size).

    Crops interpolate the pixel values as they are (0-255; interpolation is linear, so scaling commutes with
    it) and `DeviceNormalize`'s one affine step at the end maps them as it maps the file pipeline's batches."""

    def __init__(self, pretrained_cfg: PretrainedCfg, size: int, hflip: float, crop_scale: float = 0.08):
        self.size, self.hflip, self.crop_scale = size, hflip, crop_scale
        self.small = size <= SMALL_IMAGE
        self.normalize = DeviceNormalize(pretrained_cfg)

    def __call__(self, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = batch.float()
        x = self._pad_crop(x, g) if self.small else self._resized_crop(x, g)
        return self._flip_normalise(x, g)

    def from_images(self, images: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """The same for uint8 (C, H, W) images of different sizes (decoded files): small ones are resized
        and center-cropped to the training size first; larger ones get their crop box from their own
        height and width, so RandomResizedCrop sees the whole image."""
        if self.small:
            side = [v2.functional.center_crop(v2.functional.resize(im, [self.size], antialias=True), [self.size])
                    for im in images]
            return self._flip_normalise(self._pad_crop(torch.stack(side).float(), g), g)
        heights = torch.tensor([im.shape[-2] for im in images], dtype=torch.float)
        widths = torch.tensor([im.shape[-1] for im in images], dtype=torch.float)
        # one copy, not one per image
        boxes = to_device(self._boxes(heights, widths, g, self.crop_scale), images[0].device)
        crops = [roi_align(im[None].float(), [boxes[i:i + 1]], output_size=self.size,
                           spatial_scale=1.0, sampling_ratio=-1, aligned=True) for i, im in enumerate(images)]
        return self._flip_normalise(torch.cat(crops), g)

    def _flip_normalise(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.hflip > 0:
            flip = to_device(torch.rand(x.shape[0], generator=g) < self.hflip, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.normalize.pixels(x)

    def _pad_crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        pad = max(1, self.size // 8)
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        b = x.shape[0]
        top, left = to_device(torch.randint(0, 2 * pad + 1, (2, b), generator=g), x.device)
        span = torch.arange(self.size, device=x.device)
        rows, cols = top[:, None] + span, left[:, None] + span  # (B, size) each
        x = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return x.permute(0, 3, 1, 2)  # advanced indexing put the channels last

    @staticmethod
    def _boxes(heights: torch.Tensor, widths: torch.Tensor, g: torch.Generator, min_scale: float = 0.08,
               tries: int = 10) -> torch.Tensor:
        """(B, 4) x0, y0, x1, y1 of RandomResizedCrop boxes (scale min_scale-1, ratio 3/4-4/3, torchvision's 10
        tries per image, then the whole image)."""
        b = heights.shape[0]
        area = (heights * widths)[:, None] * torch.empty(b, tries).uniform_(min_scale, 1.0, generator=g)
        ratio = torch.exp(torch.empty(b, tries).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        fits = (w <= widths[:, None]) & (h <= heights[:, None])
        found = fits.any(1)
        pick = fits.float().argmax(1)
        rows = torch.arange(b)
        w = torch.where(found, w[rows, pick], widths)
        h = torch.where(found, h[rows, pick], heights)
        x0 = torch.rand(b, generator=g) * (widths - w)
        y0 = torch.rand(b, generator=g) * (heights - h)
        return torch.stack([x0, y0, x0 + w, y0 + h], 1)

    def _resized_crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        boxes = self._boxes(torch.full((b,), float(height)), torch.full((b,), float(width)), g, self.crop_scale)
        boxes = to_device(torch.cat([torch.arange(b, dtype=torch.float)[:, None], boxes], 1), x.device)
        # sampling_ratio=-1 averages ceil(box / output) samples per output pixel: downscaling does not alias.
        return roi_align(x, boxes, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class DeviceLoader:
    """(images, labels) batches from an ImageStore, in the order of an EpochSampler (sharded and resumable
    like the file pipeline). Has `bad_files` like SkipUnreadable: the files that did not decode at build."""

    yields_empty_batches = False  # every image in the store decoded at build

    def __init__(self, store: ImageStore, sampler, batch_size: int, augment: DeviceAugment, drop_last: bool,
                 bad_files: BadFiles | None):
        self.store, self.sampler, self.batch_size, self.augment = store, sampler, batch_size, augment
        self.drop_last, self.bad_files = drop_last, bad_files

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor([index for _, index in self.sampler], dtype=torch.long)
        order = to_device(order, self.store.images.device)
        for k in range(len(self)):
            index = order[k * self.batch_size:(k + 1) * self.batch_size]
            g = self.sampler.batch_generator(k, self.batch_size)
            yield self.augment(self.store.images[index], g), self.store.labels[index]
