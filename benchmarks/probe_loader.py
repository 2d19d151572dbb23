"""Where the file pipeline's time goes: per-image costs in one process, then DataLoader rates of variants.

    python3 benchmarks/probe_loader.py DIR [--workers 16] [--batches 30]

Variants: resnets' training transform (float, normalised in the workers) and the same ops ending in uint8;
torchvision's ImageFolder with the classic PIL transforms, float and uint8. A measurement script for
BENCHMARKS.md, not part of the package.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import torch
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms as v1

from resnets.data import load_splits, train_transform
from resnets.data.bad_files import collate_skipping
from resnets.data.images import load_image
from resnets.models import get_config


def per_image_ms(fn, items, n=300) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(items[i % len(items)])
    return (time.perf_counter() - t0) / n * 1000


def loader_rate(dataset, workers: int, batch: int, batches: int, collate=None) -> float:
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, pin_memory=True, collate_fn=collate,
                        sampler=RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 4)))
    it = iter(loader)
    for _ in range(4):  # start-up: every worker has begun
        next(it)
    t0, images = time.perf_counter(), 0
    for batch in it:  # collate_skipping adds the batch's unreadable files
        x, y = batch[0], batch[1]
        x = x.cuda(non_blocking=True) if torch.cuda.is_available() else x
        images += y.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("-b", type=int, default=256)
    a = p.parse_args()
    cfg = get_config("resnet50").default_pretrained_cfg()
    ours = train_transform(cfg, 224)
    ours_u8 = train_transform(cfg, 224, normalize=False)
    classic = v1.Compose([v1.RandomResizedCrop(224), v1.RandomHorizontalFlip(), v1.ToTensor(),
                          v1.Normalize(cfg.mean, cfg.std)])
    classic_u8 = v1.Compose([v1.RandomResizedCrop(224), v1.RandomHorizontalFlip(), v1.PILToTensor()])

    files = sorted(glob.glob(f"{a.data}/*/*.jpg"))[:300]
    torch.set_num_threads(1)
    images = [load_image(f) for f in files]
    print(f"one process, ms per image ({torch.get_num_threads()} thread):")
    print(f"  resnets decode (read + load + exif + RGB)  {per_image_ms(load_image, files):.2f}")
    from PIL import Image
    pil_ms = per_image_ms(lambda f: Image.open(f).convert('RGB'), files)
    print(f"  PIL open + convert RGB                     {pil_ms:.2f}")
    for name, tf in [("resnets transform, float", ours), ("resnets transform, uint8", ours_u8),
                     ("classic v1 transform, float", classic), ("classic v1 transform, uint8", classic_u8)]:
        print(f"  {name:<42} {per_image_ms(tf, images):.2f}")
    splits = load_splits("folder", a.data, val_fraction=0.2, seed=0, train_transform=ours)
    splits_u8 = load_splits("folder", a.data, val_fraction=0.2, seed=0, train_transform=ours_u8)
    rows = [("resnets, float", splits.train, collate_skipping), ("resnets, uint8", splits_u8.train, collate_skipping),
            ("ImageFolder + PIL v1, float", datasets.ImageFolder(a.data, classic), None)]
    print(f"DataLoader, {a.workers} workers, batch {a.b}, pinned, to the device:")
    # The main process's intra-op threads: torch's default (one per core) against one.
    for threads in (os.cpu_count(), 1):
        torch.set_num_threads(threads)
        for name, ds, collate in rows:
            rate = loader_rate(ds, a.workers, a.b, a.batches, collate)
            print(f"  {name:<32} main process {threads:>2} threads  {rate:,.0f} img/s", flush=True)

if __name__ == "__main__":
    main()
