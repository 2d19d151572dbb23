"""Write src/resnets/hub/weights.csv, resnets' catalog of published weights, from the facts timm publishes.

    .venv/bin/python tools/weights_catalog.py RESULTS_CSV > src/resnets/hub/weights.csv

For every resnets architecture that timm has pretrained weights for: the weight set's name (architecture.tag),
where it is published (torchvision's own URL, whose file name carries the first hex digits of its sha256, for
the torchvision sets; timm's Hugging Face Hub repo for the others), its preprocessing (timm's pretrained cfg),
number of classes, license, whether it is the architecture's default set (timm's first), and its ImageNet-1k
top-1 at its test size from timm's evaluation of every set (RESULTS_CSV: results/results-imagenet.csv of
huggingface/pytorch-image-models). Needs timm installed (a test extra); the package itself reads the CSV only.
"""
from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict

import timm
from timm.models import get_pretrained_cfg

import resnets

FIELDS = ["weights", "source", "sha256", "input_size", "test_input_size", "crop_pct", "test_crop_pct",
          "interpolation", "mean", "std", "num_classes", "labels", "license", "top1", "top1_size", "default"]


def top1_by_set(results_csv: str) -> dict[str, tuple[float, int]]:
    """Top-1 at the largest size timm evaluated each set at (its test size where it has one)."""
    best: dict[str, tuple[float, int]] = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            size = int(row["img_size"])
            if row["model"] not in best or size > best[row["model"]][1]:
                best[row["model"]] = (float(row["top1"]), size)
    return best


def main(results_csv: str) -> None:
    ours = set(resnets.list_models())
    top1 = top1_by_set(results_csv)
    defaults = {arch: get_pretrained_cfg(arch).tag for arch in ours if timm.is_model_pretrained(arch)}
    rows = defaultdict(list)
    for name in timm.list_pretrained():
        arch, _, tag = name.partition(".")
        if arch not in ours:
            continue
        cfg = get_pretrained_cfg(name)
        torchvision_url = cfg.url if tag in ("tv_in1k", "tv2_in1k") else ""
        sha = re.search(r"-([a-f0-9]{8,})\.", torchvision_url) if torchvision_url else None
        score, size = top1.get(name, ("", ""))
        rows[arch].append(dict(
            weights=name, source=torchvision_url or f"hf-hub:{cfg.hf_hub_id}", sha256=sha.group(1) if sha else "",
            input_size=cfg.input_size[-1], test_input_size=cfg.test_input_size[-1] if cfg.test_input_size else "",
            crop_pct=cfg.crop_pct, test_crop_pct=cfg.test_crop_pct or "", interpolation=cfg.interpolation,
            mean=" ".join(map(str, cfg.mean)), std=" ".join(map(str, cfg.std)), num_classes=cfg.num_classes,
            labels="imagenet-1k" if cfg.num_classes == 1000 else "", license=cfg.license or "unknown",
            top1=score, top1_size=size, default=int(tag == defaults.get(arch))))
    writer = csv.DictWriter(sys.stdout, FIELDS, lineterminator="\n")
    writer.writeheader()
    for arch in sorted(rows):
        writer.writerows(rows[arch])


if __name__ == "__main__":
    main(sys.argv[1])
