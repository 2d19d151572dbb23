"""`resnets train` and `resnets lr-find`: flags map one to one onto TrainConfig fields."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


from ..device import resolve_device
from ..errors import ConfigError, RunStopped
from ..fileio import check_writable
from .config import TrainConfig, add_arguments, make_config, overrides_from_args
from .distributed import Distributed
from .finetune import head_only
from .lr_find import LrFind, find_lr, lr_option, plot_lr_find, sweep_config, sweep_steps
from .run import assemble
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


def add_lr_find(parser: argparse.ArgumentParser) -> None:
    parser.description = ("The learning-rate range test (Smith 2017, fastai's lr_find): train from the starting "
                          "weights for a few steps with the lr growing exponentially to 10, plot the loss against "
                          "the lr and suggest one: a tenth of the lr where the loss is lowest. Takes the options of "
                          "`resnets train` (the lr's own aside) and writes no run folder; `resnets train --lr auto` "
                          "runs the same test at its start.")
    add_arguments(parser)
    # --output here is the plot: train's --output (the folder of run folders) means nothing without a run folder.
    # "resolve" takes the flag from train's option (a YAML `output:` still sets that one, unused).
    parser.conflict_handler = "resolve"  # read by the groups made from here on
    sweep = parser.add_argument_group("range test")
    sweep.add_argument("--output", dest="plot", default="lr_find.png", metavar="FILE.png",
                       help="the plot of loss against lr [default: lr_find.png]")
    sweep.add_argument("--steps", type=int, default=None, metavar="N",
                       help="optimizer steps of the sweep (it stops early once the loss diverges) [default: 100, or "
                            "fewer when --epochs of the data are fewer steps, at least 50]")


def run_lr_find(args: argparse.Namespace) -> int:
    plot, steps = args.plot, args.steps
    overrides = {k: v for k, v in overrides_from_args(args).items() if k not in ("plot", "steps")}
    if steps is not None and steps < 2:
        raise ConfigError(f"--steps must be >= 2, got {steps}")
    check_writable(plot, "--output")  # now, not after the sweep
    found, cfg = lr_find(overrides, steps)
    plot_lr_find(found, plot, title=f"{cfg.model} on {cfg.dataset}: {cfg.opt}, batch {cfg.batch_size}")
    given = lr_option(found.suggestion, cfg, world_size=1)
    scaled = f"; --lr {given:.3g} with --scale-lr {cfg.scale_lr}" if given != found.suggestion else ""
    print(f"suggested lr {found.suggestion:.3g} ({found.reason}){scaled}")
    print(plot)
    return 0


def lr_find(overrides: dict[str, Any], steps: int | None = None) -> tuple[LrFind, TrainConfig]:
    """The range test of the run `overrides` would start (build_run's data, recipe, model, loader and step, in one
    process, without a run folder): the sweep, and the config it swept with."""
    cfg = make_config(overrides).resolved()
    if cfg.resume:
        raise ConfigError("lr-find tests the lr of a new run; a resumed run keeps its own: drop --resume")
    device, ctx = resolve_device(cfg.device), Distributed()
    # the recipe chooses batch, optimizer and augmentation as for the run; the lr is what the sweep is for
    parts = assemble(cfg, set(overrides) | {"lr"}, ctx, device)
    step = parts.make_step(sweep_config(parts.cfg), ctx, device)
    found = find_lr(step, parts.train_loader, parts.sampler,
                    sweep_steps(len(parts.train_loader), parts.cfg.epochs, steps),
                    classifier_only=head_only(parts.cfg, epoch=1))
    return found, parts.cfg


COMMANDS = {"train": (add_train, run_train), "lr-find": (add_lr_find, run_lr_find)}
