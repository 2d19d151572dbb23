"""Write a folder of photo-like JPEGs for `resnets bench --data DIR` (no dataset can be downloaded here).

    python3 benchmarks/make_jpegs.py OUT_DIR [--classes 10] [--per-class 2000] [--workers 16]

Each image is a smooth random colour field plus grain, 360-440 x 270-330 px, quality 85: about 38 KB, the size
of the small JPEGs behind the issue's 3,695 img/s ImageFolder figure. Pure noise would compress far worse than
a photo and make decoding look slower than it is; a flat colour far better.
"""
from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image


def write_one(job: tuple[str, int]) -> int:
    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(360, 441)), int(rng.integers(270, 331))
    field = (rng.random((h // 25 + 2, w // 25 + 2, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(field).resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 13, (h, w, 3)).astype(np.int16)
    Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
    return os.path.getsize(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=2000)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    a = p.parse_args()
    jobs = []
    for c in range(a.classes):
        folder = Path(a.out) / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(str(folder / f"{i:05d}.jpg"), c * a.per_class + i) for i in range(a.per_class)]
    with Pool(a.workers) as pool:
        sizes = pool.map(write_one, jobs, chunksize=64)
    print(f"{len(sizes)} JPEGs in {a.out}, mean {sum(sizes) / len(sizes) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
