"""--decode-on-device: loader workers only read JPEG bytes; the training device decodes and augments them.

On a GPU, nvJPEG decodes a whole batch in one call, which frees the CPU cores that PIL decoding keeps busy
(the bottleneck of the file pipeline on a fast GPU). The batched decoder is TorchCodec's where it is
installed (`pip install resnets[codec]`), else torchvision's: see `jpeg_decoder`. The careful rules of
`decode_image` still hold: a worker parses each file's header and sends raw bytes only for plain RGB or
grey JPEGs within the pixel limit that end with the end-of-image marker; anything else (PNG, CMYK, a
truncated file, a bomb) is decoded on the CPU by `decode_image` as in the file pipeline, or reported
unreadable. Should the device decoder still refuse a batch, its files are decoded one by one on the CPU, so
a broken file is named and skipped, never replaced. Augmentation is `DeviceAugment.from_images`, with the
per-batch seeding of `--in-memory`: a resumed run draws the same crops.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import io as torchvision_io
from torchvision.transforms import v2

from ..device import to_device
from ..errors import BrokenImageError
from ..messages import first_line, warn
from .bad_files import BadFiles, Unreadable
from .images import MAX_IMAGE_BYTES, decode_image, read_bytes
from .in_memory import DeviceAugment

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def _torchcodec_decode(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg  # applies the EXIF orientation itself

    return decode_jpeg(payloads, mode="RGB", device=device)


def _torchvision_decode(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return torchvision_io.decode_jpeg(payloads, mode=torchvision_io.ImageReadMode.RGB, device=device,
                                      apply_exif_orientation=True)


# Batched JPEG decoders: (3, H, W) uint8 RGB images on `device`, EXIF orientation applied; a RuntimeError for
# a batch they cannot decode.
JPEG_DECODERS: dict[str, Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]] = {
    "torchcodec": _torchcodec_decode, "torchvision": _torchvision_decode}


def jpeg_decoder(device: torch.device | str = "cpu") -> str:
    """The batched JPEG decoder to use on `device`: TorchCodec's where it is installed and decodes there,
    else torchvision's.

    TorchCodec (>= 0.16) succeeds torchvision's image decoding, deprecated since torchvision 0.29. Both send
    baseline JPEGs to nvJPEG's hardware backend where the GPU has one (A100, H100); which is faster on a
    given GPU is what `benchmarks/device_decode.py` measures. A TorchCodec that imports but cannot decode
    on the device (a build without nvJPEG, libraries that do not match this torch) would send every batch
    to the slow file-by-file fallback of `decode_batch`: it is tried on one small JPEG first."""
    return _working_decoder(torch.device(device).type)


@functools.cache
def _working_decoder(device_type: str) -> str:
    try:
        probe = io.BytesIO()
        Image.new("RGB", (16, 8), "orange").save(probe, "JPEG")
        (image,) = _torchcodec_decode([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)],
                                      torch.device(device_type))
        if image.shape != (3, 8, 16):
            raise RuntimeError(f"decoded a {tuple(image.shape)} image from a (3, 8, 16) one")
    except ImportError:  # not installed: the documented default
        return "torchvision"
    except Exception as e:  # installed but broken here: say so once, decode on
        warn(f"TorchCodec cannot decode JPEGs on {device_type} ({type(e).__name__}: {first_line(e)}); "
                       f"using torchvision's decoder")
        return "torchvision"
    return "torchcodec"


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
    JPEG, else the CPU-decoded (3, H, W) uint8 image; an `Unreadable` marker for a broken file, a special file
    (a FIFO, a device) or one of more than `max_bytes`, as `read_bytes` refuses them in the file pipeline."""

    def __init__(self, samples: list[tuple[str, int]], max_bytes: int = MAX_IMAGE_BYTES):
        self.samples, self.max_bytes = samples, max_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, str] | Unreadable:
        index = key[1] if isinstance(key, tuple) else key  # EpochSampler hands out (epoch, index)
        path, label = self.samples[index]
        try:
            data = read_bytes(path, self.max_bytes)
            if device_decodable(data):
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, str(path)
            return v2.functional.pil_to_tensor(decode_image(data, path)), label, str(path)
        except BrokenImageError as e:
            return Unreadable(str(path), e.reason)


def collate_encoded(batch: list[Any]) -> tuple[list[torch.Tensor], torch.Tensor, list[str], list[Unreadable]]:
    good = [item for item in batch if not isinstance(item, Unreadable)]
    return ([p for p, _, _ in good], torch.tensor([y for _, y, _ in good], dtype=torch.long), [f for _, _, f in good],
            [item for item in batch if isinstance(item, Unreadable)])


def decode_batch(payloads: list[torch.Tensor], paths: list[str], device: torch.device, decoder: str | None = None,
                 ) -> tuple[list[torch.Tensor | None], list[Unreadable]]:
    """(3, H, W) uint8 images on `device` (None where a file turned out broken), and the broken ones;
    `decoder` names one of JPEG_DECODERS (default: `jpeg_decoder(device)`)."""
    images: list[torch.Tensor | None] = [p.to(device, non_blocking=True) if p.ndim == 3 else None for p in payloads]
    encoded = [i for i, p in enumerate(payloads) if p.ndim == 1]
    broken: list[Unreadable] = []
    if encoded:
        decoder = decoder or jpeg_decoder(device)
        try:
            decoded = JPEG_DECODERS[decoder]([payloads[i] for i in encoded], device)
            for i, image in zip(encoded, decoded):
                images[i] = image
        except RuntimeError as e:
            for i in encoded:  # one by one on the CPU: name the file that breaks the batch
                try:
                    image = decode_image(payloads[i].numpy().tobytes(), paths[i])
                    images[i] = v2.functional.pil_to_tensor(image).to(device)
                except BrokenImageError as error:
                    broken.append(Unreadable(paths[i], error.reason))
            if not broken:  # no file to blame: the device decoder itself failed, and the CPU now does its work
                _warn_once(f"the {decoder} JPEG decoder failed on a batch that the CPU decodes "
                           f"({first_line(e)}); such batches are decoded on the CPU, one file "
                           f"at a time")
    return images, broken


_warn_once = functools.cache(warn)  # per message


class DeviceDecodeLoader:
    """(images, labels) batches on `device` from a DataLoader over `EncodedFiles` (collated by
    `collate_encoded`) drawing from `sampler`; unreadable files go to `bad_files`.

    The next `prefetch` batches are decoded and augmented on a thread of their own, on a CUDA stream of
    their own, while the caller trains on this one. The batched nvJPEG call holds its thread until its
    batch is decoded; made in the training thread, decoding and the training step took turns (BENCHMARKS.md:
    the H100 rates of the two alone predict the rate of the two in turn). The decoders release the GIL."""

    yields_empty_batches = True  # a batch of nothing but broken files is yielded empty, and counted

    def __init__(self, loader, sampler, augment: DeviceAugment, device: torch.device, bad_files: BadFiles,
                 decoder: str | None = None, prefetch: int = 2):
        self.loader, self.sampler, self.augment = loader, sampler, augment
        self.device, self.bad_files, self.decoder = device, bad_files, decoder or jpeg_decoder(device)
        self.prefetch = max(1, prefetch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = enumerate(self.loader)  # advanced by the decoding thread alone
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        pool = ThreadPoolExecutor(1, thread_name_prefix="resnets-decode")  # one thread: batches stay in order
        ahead = deque(pool.submit(self._prepare, batches, side) for _ in range(self.prefetch))
        try:
            while (batch := ahead.popleft().result()) is not None:
                ahead.append(pool.submit(self._prepare, batches, side))
                images, labels, ready = batch
                if ready is not None:  # the training stream waits on the device, not the host
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(ready)
                    images.record_stream(stream)  # made on the side stream: not to be reused before it is used
                    labels.record_stream(stream)
                yield images, labels
        finally:  # also when the caller stops early: no decode outlives the epoch
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, batches: Iterator, side: torch.cuda.Stream | None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None:
        item = next(batches, None)
        if item is None:
            return None
        k, (payloads, labels, paths, unreadable) = item
        with self._on(side):
            if side is not None:
                # The decoders allocate their output on this stream but write it from a private one that does
                # not wait for this stream: the memory of the last batch, freed here, may still be read by its
                # queued crops. Waiting costs this thread a few kernels, never the training stream.
                side.synchronize()
            images, broken = decode_batch(payloads, paths, self.device, self.decoder)
            self.bad_files.add(unreadable + broken)
            keep = [i for i, image in enumerate(images) if image is not None]
            if not keep:
                return torch.empty(0), torch.empty(0, dtype=torch.long), None
            g = self.sampler.batch_generator(k, self.loader.batch_size)
            batch = self.augment.from_images([images[i] for i in keep], g), to_device(labels[keep], self.device)  # type: ignore[misc]
            if side is None:
                return *batch, None
            ready = torch.cuda.Event()
            ready.record(side)
            return *batch, ready

    def _on(self, side: torch.cuda.Stream | None) -> contextlib.ExitStack:
        """The decoding thread's GPU and stream: a new thread starts on GPU 0 and its default stream, and under
        torchrun this process may train on another GPU."""
        stack = contextlib.ExitStack()
        if side is not None:
            stack.enter_context(torch.cuda.device(self.device))
            stack.enter_context(torch.cuda.stream(side))
        return stack
