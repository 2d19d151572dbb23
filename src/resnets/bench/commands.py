"""`resnets bench`: arguments, the table printed, the JSON report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..caches import COMPILE_MODES
from ..device import AMP_DTYPES, check_workers, default_workers, resolve_device
from ..errors import ConfigError
from ..fileio import atomic_write_json, check_writable
from ..models import build_model
from ..options import add_device_argument, add_workers_argument
from .data import run_data_bench
from .model import BenchSettings, backend_settings, format_table, make_step, parse_inductor_settings, run_bench


def add_bench(p: argparse.ArgumentParser) -> None:
    p.description = ("Images per second of resnets and, with --compare, the reference implementation of the same "
                     "architecture, alternating in one process.")
    p.add_argument("--model", default="resnet50", metavar="NAME", help="[default: resnet50]")
    p.add_argument("--mode", choices=("train", "infer"), default="train", help="[default: train]")
    add_device_argument(p)
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: 256 on CUDA, 16 on the CPU")
    p.add_argument("--img-size", type=int, default=None, metavar="PX", help="default: the model's")
    p.add_argument("--steps", type=int, default=20, help="timed steps per implementation and round [default: 20]")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation) [default: 5]")
    p.add_argument("--rounds", type=int, default=3, help="[default: 3]")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default=None, help="default: bf16 on CUDA, off on the CPU")
    p.add_argument("--compile", choices=("off", *COMPILE_MODES), default="off", help="[default: off]")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="[default: on]")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its conv algorithms per shape, as `resnets train` does (CUDA only; "
                        "applies to every implementation compared) [default: on]")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="a torch._inductor.config setting while compiling, e.g. conv_1x1_as_mm=true or "
                        "freezing=true (repeatable; with --compile)")
    p.add_argument("--data", default="synthetic", metavar="DIR",
                   help="synthetic (random tensors on the device), or a folder of images: also time each stage of "
                        "the input pipeline (files, in-memory store, device augmentation) into the training step")
    add_workers_argument(p, "resnets train's: the cores, at most 16 feeding a GPU, 8 the CPU")
    p.add_argument("--compare", default="", help="comma-separated: torchvision,timm")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report (every step time)")


def run_bench_command(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json")  # now, not after minutes of benchmarking
    check_workers(args.workers)
    on_cuda = resolve_device(args.device).type == "cuda"
    if args.data != "synthetic":
        if not Path(args.data).is_dir():
            raise ConfigError(f"--data {args.data}: not a folder of images (or 'synthetic')")
        if args.mode != "train":
            raise ConfigError("--data DIR times the training input pipeline: use it with --mode train")
    settings = BenchSettings(
        model=args.model, mode=args.mode, device=args.device,
        batch_size=(256 if on_cuda else 16) if args.batch_size is None else args.batch_size,
        img_size=args.img_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        amp=args.amp or ("bf16" if on_cuda else "off"), compile=args.compile, channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark, inductor=parse_inductor_settings(args.inductor) if args.inductor else {},
        compare=tuple(c for c in (args.compare or "").split(",") if c))
    report = run_bench(settings, log=lambda m: print(m, file=sys.stderr))
    print(format_table(report))
    if args.data != "synthetic":
        with backend_settings(settings):
            report["data_stages"] = data_stages(settings, args.data, args.workers)
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def data_stages(settings: BenchSettings, data: str, workers: int | None) -> list[dict]:
    """Per-stage img/s from the folder `data` to resnets' training step (data.py), printed as a table."""
    device = resolve_device(settings.device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = build_model(settings.model, num_classes=settings.num_classes).to(device, memory_format=memory_format)
    step = make_step(model, settings, device, ours=True)
    workers = default_workers(device.type) if workers is None else workers  # as the trainer
    stages = run_data_bench(settings.model, data, device, settings.batch_size, settings.img_size, settings.steps,
                            workers, step, settings.warmup, log=lambda m: print(m, file=sys.stderr),
                            channels_last=settings.channels_last)
    print(f"{'stage':<20} {'img/s':>10}")
    for row in stages:
        print(f"{row['stage']:<20} {row['images_per_second']:>10,.0f}  {row['note']}")
    return stages


COMMANDS = {"bench": (add_bench, run_bench_command)}
