"""Measure --decode-on-device's two changes of session 7 before relying on them: each batched JPEG decoder
alone (TorchCodec's, torchvision's), then a training step fed by the decoding loader, with the decode and
augmentation in the training thread (in turn, as the loader did before) and on a thread of their own
ahead of the step (as it does now).

    python3 benchmarks/device_decode.py DIR [--device cuda] [--model resnet50] [--batch 256] [--img-size 224]
        [--steps 20] [--rounds 2] [--workers 16] [--amp bf16] [--json FILE]

DIR: class folders of JPEGs (`benchmarks/make_jpegs.py`). Variants alternate in rounds in one process; a
rate is images over wall-clock time of `--steps` batches, after one untimed batch. A measurement script
for BENCHMARKS.md, not part of the package.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler

from resnets.bench.model import BenchSettings, make_step
from resnets.data.bad_files import BadFiles
from resnets.data.device_decode import JPEG_DECODERS, DeviceDecodeLoader, EncodedFiles, collate_encoded, jpeg_decoder
from resnets.data.in_memory import DeviceAugment
from resnets import create_model
from resnets.models import PretrainedCfg, get_config
from resnets.device import resolve_device
from resnets.training.sampling import EpochSampler


def available_decoders(device: torch.device) -> list[str]:
    return ["torchcodec", "torchvision"] if jpeg_decoder(device) == "torchcodec" else ["torchvision"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoding_loader(samples: list[tuple[str, int]], a: argparse.Namespace, device: torch.device, decoder: str,
                    pretrained_cfg: PretrainedCfg, size: int) -> DeviceDecodeLoader:
    files = DataLoader(EncodedFiles(samples), batch_size=a.batch, num_workers=a.workers, collate_fn=collate_encoded,
                       pin_memory=device.type == "cuda", persistent_workers=False,
                       sampler=RandomSampler(samples, replacement=True, num_samples=a.batch * (a.steps + 1)))
    return DeviceDecodeLoader(files, EpochSampler(len(samples), seed=0), DeviceAugment(pretrained_cfg, size, 0.5),
                              device,
                              BadFiles(len(samples), 0.99), decoder)


def in_turn(loader: DeviceDecodeLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader as it was: each batch decoded and augmented in the caller's thread and on its stream (the
    loader's own batch preparation, without the thread), then trained on."""
    batches = enumerate(loader.loader)
    while (batch := loader._prepare(batches, None)) is not None:
        yield batch[0], batch[1]


def rate(batches: Iterator, steps: int, device: torch.device, step: Callable | None) -> float:
    next(batches)  # workers starting, first decoder calls
    sync(device)
    t0, images = time.perf_counter(), 0
    for _, (x, y) in zip(range(steps), batches):
        if step is not None:
            step(x, y)
        images += y.shape[0]
    sync(device)
    return images / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--amp", default="bf16")
    p.add_argument("--json")
    a = p.parse_args()
    device = resolve_device(a.device)
    amp = a.amp if device.type == "cuda" else "off"
    classes = sorted(d for d in Path(a.data).iterdir() if d.is_dir())
    samples = [(str(f), label) for label, d in enumerate(classes) for f in sorted(d.glob("*.jpg"))]
    pretrained_cfg = get_config(a.model).default_pretrained_cfg()
    settings = BenchSettings(model=a.model, batch_size=a.batch, img_size=a.img_size, amp=amp)
    torch.backends.cudnn.benchmark = True
    model = create_model(a.model, num_classes=len(classes)).to(device, memory_format=torch.channels_last)
    train_step = make_step(model, settings, device, ours=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # the loader's crops are contiguous: as the trainer
        train_step(x.contiguous(memory_format=torch.channels_last), y)

    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=device)
    y = torch.randint(0, len(classes), (a.batch,), device=device)
    for _ in range(3):
        step(x, y)
    print(f"{len(samples)} JPEGs, {device}, {a.model} at {a.img_size}px, batch {a.batch}, {a.workers} workers; "
          f"torch {torch.__version__}")

    # The decoders alone, on payloads read into memory once: no workers, no augmentation.
    payload_batches = [next(iter(decoding_loader(samples, a, device, "torchvision", pretrained_cfg, a.img_size).loader))
                       for _ in range(4)]
    results: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        for decoder in available_decoders(device):
            decode = JPEG_DECODERS[decoder]
            decode(payload_batches[0][0], device)
            sync(device)
            t0 = time.perf_counter()
            for payloads, *_ in payload_batches:
                decode(payloads, device)
            sync(device)
            results.setdefault(f"decode only, {decoder}", []).append(
                sum(len(b[0]) for b in payload_batches) / (time.perf_counter() - t0))
        results.setdefault("step <- synthetic", []).append(
            rate(iter([(x, y)] * (a.steps + 1)), a.steps, device, step))
        for decoder in available_decoders(device):
            for where, ahead in (("in turn", False), ("ahead on a thread", True)):
                for stage, fed in (("files -> device batches", None), ("step <- device decode", step)):
                    loader = decoding_loader(samples, a, device, decoder, pretrained_cfg, a.img_size)
                    batches = iter(loader) if ahead else in_turn(loader)
                    results.setdefault(f"{stage}, {decoder}, {where}", []).append(rate(batches, a.steps, device, fed))
        print(f"round {len(results['step <- synthetic'])} done", flush=True)
        rows = [dict(stage=name, images_per_second=statistics.median(v), rounds=v) for name, v in results.items()]
        if a.json:  # after every round: a run cut short by its time limit keeps what it measured
            Path(a.json).write_text(json.dumps(dict(device=str(device), torch=torch.__version__, model=a.model,
                                                    batch=a.batch, img_size=a.img_size, workers=a.workers,
                                                    images=len(samples), rows=rows), indent=1))
    for row in rows:
        print(f"{row['stage']:<58} {row['images_per_second']:>9,.0f} img/s   rounds: "
              + ", ".join(f"{v:,.0f}" for v in row["rounds"]))


if __name__ == "__main__":
    main()
