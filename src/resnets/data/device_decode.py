"""--decode-on-device: loader workers only read JPEG bytes; the training device decodes and augments them.

On a GPU, `torchvision.io.decode_jpeg(..., device="cuda")` decodes a whole batch with nvJPEG, which frees
the CPU cores that PIL decoding keeps busy (the bottleneck of the file pipeline on a fast GPU). The careful
rules of `decode_image` still hold: a worker parses each file's header and sends raw bytes only for plain
RGB or grey JPEGs within the pixel limit that end with the end-of-image marker; anything else (PNG, CMYK,
a truncated file, a bomb) is decoded on the CPU by `decode_image` as in the file pipeline, or reported
unreadable. Should the device decoder still refuse a batch, its files are decoded one by one on the CPU, so
a broken file is named and skipped, never replaced. Augmentation is `DeviceAugment.from_images`, with the
per-batch seeding of `--in-memory`: a resumed run draws the same crops.
"""
from __future__ import annotations

import io
import math
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from .bad_files import BadFiles, Unreadable
from .images import BrokenImageError, decode_image, read_bytes
from .resident import DeviceAugment

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def device_decodable(data: bytes) -> bool:
    """A JPEG the device decoder may take as it is: RGB or grey, within PIL's pixel limit, not truncated."""
    if not data.startswith(JPEG_START) or not data.rstrip(b"\x00\r\n ").endswith(JPEG_END):
        return False
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:  # header only
            return img.mode in ("RGB", "L") and img.width * img.height <= (Image.MAX_IMAGE_PIXELS or math.inf)
    except Exception:  # an unreadable header: the careful CPU path says why
        return False


class EncodedFiles(Dataset):
    """Items (payload, label, path): payload is the file's bytes as a 1-D uint8 tensor for a device-decodable
    JPEG, else the CPU-decoded (3, H, W) uint8 image; an `Unreadable` marker for a broken file."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, str] | Unreadable:
        index = key[1] if isinstance(key, tuple) else key  # EpochSampler hands out (epoch, index)
        path, label = self.samples[index]
        try:
            data = read_bytes(path)
            if device_decodable(data):
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, str(path)
            return v2.functional.pil_to_tensor(decode_image(data, path)), label, str(path)
        except BrokenImageError as e:
            return Unreadable(str(path), e.reason)


def collate_encoded(batch: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor, list[str], list[Unreadable]]:
    good = [item for item in batch if not isinstance(item, Unreadable)]
    return ([p for p, _, _ in good], torch.tensor([y for _, y, _ in good], dtype=torch.long), [f for _, _, f in good],
            [item for item in batch if isinstance(item, Unreadable)])


def decode_batch(payloads: list[torch.Tensor], paths: list[str], device: torch.device,
                 ) -> tuple[list[torch.Tensor | None], list[Unreadable]]:
    """(3, H, W) uint8 images on `device` (None where a file turned out broken), and the broken ones."""
    images: list[torch.Tensor | None] = [p.to(device, non_blocking=True) if p.ndim == 3 else None for p in payloads]
    encoded = [i for i, p in enumerate(payloads) if p.ndim == 1]
    broken: list[Unreadable] = []
    if encoded:
        try:
            decoded = decode_jpeg([payloads[i] for i in encoded], mode=ImageReadMode.RGB, device=device,
                                  apply_exif_orientation=True)
            for i, image in zip(encoded, decoded):
                images[i] = image
        except RuntimeError:
            for i in encoded:  # one by one on the CPU: name the file that breaks the batch
                try:
                    image = decode_image(payloads[i].numpy().tobytes(), paths[i])
                    images[i] = v2.functional.pil_to_tensor(image).to(device)
                except BrokenImageError as e:
                    broken.append(Unreadable(paths[i], e.reason))
    return images, broken


class DeviceDecodeLoader:
    """(images, labels) batches on `device` from a DataLoader over `EncodedFiles` (collated by
    `collate_encoded`) drawing from `sampler`; unreadable files go to `bad_files`."""

    yields_empty_batches = True  # a batch of nothing but broken files is yielded empty, and counted

    def __init__(self, loader, sampler, augment: DeviceAugment, device: torch.device, bad_files: BadFiles):
        self.loader, self.sampler, self.augment = loader, sampler, augment
        self.device, self.bad_files = device, bad_files

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k, (payloads, labels, paths, unreadable) in enumerate(self.loader):
            images, broken = decode_batch(payloads, paths, self.device)
            self.bad_files.add(unreadable + broken)
            keep = [i for i, image in enumerate(images) if image is not None]
            if not keep:
                yield torch.empty(0), torch.empty(0, dtype=torch.long)
                continue
            g = self.sampler.batch_generator(k, self.loader.batch_size)
            yield self.augment.from_images([images[i] for i in keep], g), labels[keep].to(self.device)  # type: ignore[misc]
