"""`resnets train`: flags map one to one onto TrainConfig fields."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import RunStopped
from .config import add_arguments, overrides_from_args
from .trainer import train


def add_train(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train on a folder of images, a CSV, CIFAR or the built-in digits. Options come from "
                          "the defaults, then -c FILE.yaml, then the flags given.")
    add_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the job
    try:
        result = train(**overrides_from_args(args))
    except RunStopped as stopped:  # SIGTERM or SIGINT: saved where it was, and the shell's code for the signal
        if main_rank:
            print(f"resnets train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    if not main_rank:
        return 0
    print(f"best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}")
    print(result.run_dir)
    return 0


COMMANDS = {"train": (add_train, run_train)}
