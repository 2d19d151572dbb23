"""`resnets weights` (the catalog of published weights) and `resnets download` (fetch ahead of use)."""
from __future__ import annotations

import argparse

from ..models import get_config
from ..models.metadata_schema import parameter_count
from . import download
from .catalog import list_weights
from .download import cached


def add_weights(p: argparse.ArgumentParser) -> None:
    p.description = ("Every published weight set resnets can load by name: where it comes from, its ImageNet-1k "
                     "top-1 as timm measured it (at the size given), its input and test sizes, license, size, and "
                     "whether it is in the cache.")
    p.add_argument("pattern", nargs="?", default="*",
                   help="a set (resnet50.a1_in1k), an architecture (resnet50) or a wildcard ('resnext*') "
                        "[default: all]")


def run_weights(args: argparse.Namespace) -> int:
    sets = list_weights(args.pattern)
    if not sets:
        print(f"no published weights match {args.pattern!r}")
        return 0
    width = max(len(w.name) for w in sets)
    print(f"{'weights':<{width}}  {'top-1':>6} {'at':>4}  {'input':>5} {'test':>5}  {'MB':>5}  cached  license       "
          f"source")
    sizes: dict[tuple[str, int], float] = {}
    for w in sets:
        key = (w.architecture, w.num_classes)
        if key not in sizes:  # float32 parameters, as published
            # counted on the meta device, which allocates nothing: the catalog's 100-odd sets in a moment
            sizes[key] = parameter_count(get_config(w.architecture).replace(num_classes=w.num_classes)) * 4 / 2**20
        test = w.pretrained_cfg.test_input_size[-1] if w.pretrained_cfg.test_input_size else ""
        top1 = f"{w.top1:6.2f} {w.top1_size:>4}" if w.top1 is not None else f"{'-':>6} {'':>4}"
        print(f"{w.name + (' *' if w.default else ''):<{width + 2}}{top1}  {w.pretrained_cfg.input_size[-1]:>5} "
              f"{test:>5}  {sizes[key]:>5.0f}  {'yes' if cached(w.source) else 'no':<6}  "
              f"{w.license:<12}  {w.source}")
    print("* the architecture's default (pretrained=True, --pretrained alone)")
    return 0


def add_download(p: argparse.ArgumentParser) -> None:
    p.description = ("Fetch published weights into the caches (huggingface_hub's, torch.hub's) ahead of use, e.g. on "
                     "a login node for compute nodes without a network (then run them with HF_HUB_OFFLINE=1).")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="a set (resnet50.a1_in1k), an architecture (its default set), hf-hub:ORG/REPO or a URL")


def run_download(args: argparse.Namespace) -> int:
    for found in download(args.names):
        print(f"{found.name}: {found.path}")
    return 0


COMMANDS = {"weights": (add_weights, run_weights), "download": (add_download, run_download)}
