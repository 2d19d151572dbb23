"""CLI subcommand `train`: flags map one to one onto TrainConfig fields."""
from __future__ import annotations

import argparse
import os


def cmd_train(args: argparse.Namespace) -> int:
    from .config import overrides_from_args
    from .trainer import train

    result = train(**overrides_from_args(args))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
        return 0
    print(f"best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}")
    print(result.run_dir)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `resnets train`."""
    from .config import add_arguments

    p = sub.add_parser("train", help="train a model (default: digits on cifar_resnet20)",
                       description="Train on a folder of images, a CSV, CIFAR or the built-in digits.")
    add_arguments(p)
    p.set_defaults(func=cmd_train)
