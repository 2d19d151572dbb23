"""Command-line interface: a thin layer over the Python API. User mistakes print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .caches import COMPILE_MODES
from .errors import ConfigError, ResnetsError


def cmd_models(args: argparse.Namespace) -> int:
    from .analysis import model_stats
    from .models import list_models

    names = list_models(args.pattern)
    if not names:
        raise ResnetsError(f"no model matches {args.pattern!r}; see `resnets models`")
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'params':>13}  {'GMACs':>7}  input")
    for name in names:
        s = model_stats(name)
        c, h, w = s["input_size"]
        print(f"{name:<{width}}  {s['params']:>13,}  {s['gmacs']:>7.2f}  {c}x{h}x{w}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .analysis import summarize

    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    print(summarize(args.model, img_size=args.img_size, depth=args.depth, **overrides).format())
    return 0


def cmd_design(args: argparse.Namespace) -> int:
    from .analysis import design_widths

    rows = design_widths(args.template, args.cardinality, img_size=args.img_size)
    print(f"{'C':>4}  {'d':>4}  {'width C*d':>9}  {'name':>8}  {'params':>13}  {'GMACs':>6}")
    for r in rows:
        print(f"{r.cardinality:>4}  {r.width:>4}  {r.cardinality * r.width:>9}  {r.name:>8}  {r.params:>13,}  "
              f"{r.gmacs:>6.2f}")
    return 0


def bench_data_stages(settings, args: argparse.Namespace) -> list[dict]:
    """Per-stage img/s from the folder `args.data` to resnets' training step (bench_data.py)."""
    import torch

    from .bench import make_step
    from .bench_data import run_data_bench
    from .models import create_model
    from .tasks.common import resolve_device
    from .training.config import default_workers

    device = resolve_device(settings.device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = create_model(settings.model, num_classes=settings.num_classes).to(device, memory_format=memory_format)
    step = make_step(model, settings, device, fused=True)
    workers = args.workers if args.workers is not None else default_workers(device.type)  # as the trainer
    stages = run_data_bench(settings.model, args.data, device, settings.batch_size, settings.img_size,
                            settings.steps, workers, lambda x, y: step(x.contiguous(memory_format=memory_format), y),
                            settings.warmup, log=lambda m: print(m, file=sys.stderr),
                            channels_last=settings.channels_last)
    print(f"{'stage':<20} {'img/s':>10}")
    for row in stages:
        print(f"{row['stage']:<20} {row['images_per_second']:>10,.0f}  {row['note']}")
    return stages


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, backend_settings, format_table, parse_inductor_settings, run_bench
    from .fileio import atomic_write_json, check_writable
    from .tasks.common import resolve_device

    if args.json:
        check_writable(args.json, "--json")  # now, not after minutes of benchmarking
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    on_cuda = resolve_device(args.device).type == "cuda"
    if args.data != "synthetic":
        from pathlib import Path

        if not Path(args.data).is_dir():
            raise ConfigError(f"--data {args.data}: not a folder of images (or 'synthetic')")
        if args.mode != "train":
            raise ConfigError("--data DIR times the training input pipeline: use it with --mode train")
    settings = BenchSettings(
        model=args.model, mode=args.mode, device=args.device,
        batch_size=(256 if on_cuda else 16) if args.batch_size is None else args.batch_size, img_size=args.img_size, steps=args.steps,
        warmup=args.warmup, rounds=args.rounds, amp=args.amp or ("bf16" if on_cuda else "off"),
        compile=args.compile, channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark,
        inductor=parse_inductor_settings(args.inductor) if args.inductor else {},
        compare=tuple(c for c in (args.compare or "").split(",") if c))
    report = run_bench(settings, log=lambda m: print(m, file=sys.stderr))
    print(format_table(report))
    if args.data != "synthetic":
        with backend_settings(settings):
            report["data_stages"] = bench_data_stages(settings, args)
    if args.json:
        atomic_write_json(args.json, report)
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before a mistake, 39 lines for `train`: print the mistake alone, and
    where the usage is. Subcommand parsers are made of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="resnets", description="The ResNet family in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="table of models with params and GMACs")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'res2net*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="per-layer table of a model")
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--depth", type=int, default=None, help="group rows at this module depth (default: every layer)")
    p.add_argument("--num-classes", type=int, default=None)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("design", help="ResNeXt complexity-preserving widths (paper Table 2)")
    p.add_argument("template", help="resnext50, resnext101 or resnext152")
    p.add_argument("--cardinality", type=int, nargs="+", required=True, metavar="C")
    p.add_argument("--img-size", type=int, default=224)
    p.set_defaults(func=cmd_design)

    p = sub.add_parser("bench", help="training/inference throughput, against torchvision and timm",
                       description="Images per second of resnets and, with --compare, the reference "
                                   "implementation of the same architecture, alternating in one process.")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: 256 on CUDA, 16 on CPU")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=20, help="timed steps per implementation and round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default=None, help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--compile", choices=("off", *COMPILE_MODES), default="off")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its conv algorithms per shape, as `resnets train` does (CUDA only; "
                        "applies to every implementation compared)")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="a torch._inductor.config setting while compiling, e.g. conv_1x1_as_mm=true or "
                        "freezing=true (repeatable; with --compile)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (random tensors on the device), or a folder of images: also time each stage of "
                        "the input pipeline (files, in-memory store, device augmentation) into the training step")
    p.add_argument("-j", "--workers", type=int, default=None, help="loader processes for --data DIR [default: resnets train's: the cores, "
                        "at most 16 feeding a GPU, 8 on the CPU]")
    p.add_argument("--compare", default="", help="comma-separated: torchvision,timm")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report (every step time)")
    p.set_defaults(func=cmd_bench)

    from .data.commands import add_commands as add_data_commands
    from .tasks.commands import add_commands as add_task_commands
    from .training.commands import add_commands as add_train_commands

    add_train_commands(sub)
    add_task_commands(sub)
    add_data_commands(sub)
    parser.commands = sub.choices  # type: ignore[attr-defined]  (main names the subcommand's help on a mistake)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # as parse_args would, but pointing at `resnets train --help`, where train's flags are listed
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except ResnetsError as e:
        print(f"resnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path given that cannot be read or written (a folder, no permission, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        print(f"resnets {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
