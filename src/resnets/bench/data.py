"""`resnets bench --data DIR`: images per second of each stage between a folder of files and a training step.

Stages, each timed on its own and then end to end:
  files -> batches      the file pipeline: DataLoader workers decode and augment on the CPU
  files -> device       --decode-on-device: workers read bytes, the device decodes JPEGs and augments
  files -> memory       --in-memory's one-time decode into the store (and reading it back from its cache)
  memory -> batches     --in-memory's batched crop/flip/normalise on the device
  step <- source        a training step fed by each source, against the synthetic-data step
"""
from __future__ import annotations

import itertools
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler

from ..data.bad_files import BadFiles, SkipUnreadable, collate_skipping
from ..data.datasets import DataSplits, load_splits
from ..data.device_decode import DeviceDecodeLoader, EncodedFiles, collate_encoded
from ..data.in_memory import DeviceAugment, DeviceLoader, cached_store, store_size
from ..data.transforms import DeviceNormalize, train_transform
from ..errors import ConfigError
from ..models import PretrainedCfg, get_config
from ..training.sampling import EpochSampler


def _rate(batches: Iterable, count: int, device: torch.device, consume: Callable | None = None,
          normalize: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    """Images per second over `count` batches of `batches` (after the first, which pays start-up costs);
    uint8 batches are normalised on the device, as in training."""
    it: Iterator = iter(batches)
    images = 0
    first = next(it, None)
    if first is None:
        raise ConfigError("the data gave no batch")
    t0 = time.perf_counter()
    for _, (x, y) in zip(range(count), it):
        x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        if consume is not None:
            consume(x, y)
        images += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / max(time.perf_counter() - t0, 1e-9)


def run_data_bench(model_name: str, data_dir: str, device: torch.device, batch_size: int, img_size: int | None,
                   steps: int, workers: int, step: Callable[[torch.Tensor, torch.Tensor], Any],
                   warmup: int, log: Callable[[str], None], channels_last: bool = False) -> list[dict[str, Any]]:
    """Images per second of each stage, as rows (stage, images_per_second, note), each also logged."""
    pretrained_cfg = get_config(model_name).default_pretrained_cfg().with_img_size(img_size)
    size = pretrained_cfg.input_size[-1]
    splits = load_splits("folder", data_dir, val_fraction=0.2, seed=0,
                         train_transform=train_transform(pretrained_cfg, size, normalize=False))
    normalize = DeviceNormalize(pretrained_cfg, channels_last)  # as the trainer: uint8 from the workers
    stages: list[dict[str, Any]] = []

    def record(stage: str, ips: float, note: str = "") -> None:
        stages.append(dict(stage=stage, images_per_second=ips, note=note))
        log(f"{stage}: {ips:,.0f} img/s {note}")

    unreadable = BadFiles(len(splits.train), 0.99)  # the bench times the pipeline; it does not judge the data
    draws = batch_size * (steps + 1)
    files = SkipUnreadable(DataLoader(
        splits.train, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping,
        sampler=RandomSampler(splits.train, replacement=True, num_samples=draws),
        pin_memory=device.type == "cuda", persistent_workers=False), unreadable)
    record("files -> batches", _rate(files, steps, device, normalize=normalize),
           f"({workers} workers decode + augment on the CPU; uint8 -> float on {device.type})")
    encoded = DataLoader(EncodedFiles(splits.train.samples), batch_size=batch_size, num_workers=workers,
                         collate_fn=collate_encoded, persistent_workers=False,
                         sampler=RandomSampler(splits.train, replacement=True, num_samples=draws))
    decoded = DeviceDecodeLoader(encoded, EpochSampler(len(splits.train), seed=0),
                                 DeviceAugment(pretrained_cfg, size, 0.5), device, unreadable)
    record("files -> device batches", _rate(decoded, steps, device),
           f"({workers} workers read bytes; {decoded.decoder} decodes JPEGs, a thread augments on {device.type})")
    in_memory = _in_memory_batches(splits, pretrained_cfg, size, device, batch_size, workers, record)
    record("memory -> batches", _rate(in_memory, steps, device), f"(crop/flip/normalise on {device.type})")
    # The step is warmed up (compiled, cuDNN's algorithms picked) before any timed step, and its synthetic
    # rate is measured the same way as the others: wall clock over `steps` batches.
    synthetic = (torch.randn(batch_size, 3, size, size, device=device),
                 torch.randint(0, 2, (batch_size,), device=device))
    for _ in range(max(1, warmup)):
        step(*synthetic)
    synthetic_ips = _rate(itertools.repeat(synthetic), steps, device, consume=step)
    for stage, source, finish in (("files", files, normalize), ("device decode", decoded, None),
                                  ("memory", in_memory, None)):
        ips = _rate(source, steps, device, consume=step, normalize=finish or (lambda x: x))
        record(f"step <- {stage}", ips, f"({ips / synthetic_ips:.0%} of synthetic)")
    record("step <- synthetic", synthetic_ips)
    return stages


def _in_memory_batches(splits: DataSplits, pretrained_cfg: PretrainedCfg, size: int, device: torch.device,
                       batch_size: int, workers: int, record: Callable[..., None],
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """--in-memory's batches, epoch after epoch, after timing the store's build and its cache's read."""
    side = store_size(pretrained_cfg, size)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        store, _, _ = cached_store(splits.train, side, pretrained_cfg, cache_dir, workers)
        record("files -> memory", len(store) / (time.perf_counter() - t0), f"(once: {len(store):,} images at {side}px)")
        t0 = time.perf_counter()
        cached_store(splits.train, side, pretrained_cfg, cache_dir, workers)
        record("cache -> memory", len(store) / (time.perf_counter() - t0), "(later runs)")
    sampler = EpochSampler(len(store), seed=0)
    loader = DeviceLoader(store.to(device), sampler, batch_size, DeviceAugment(pretrained_cfg, size, hflip=0.5),
                          False, None)
    epoch = 1
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
