"""What resnets' training loop costs on the CPU beyond the model's own work: its img/s against a bare loop.

    python benchmarks/trainer_overhead.py [--model cifar_resnet20] [--rounds 5] [--no-train-run]
        [--train-option in_memory=true ...]

Three contenders over the built-in digits (the 1,438 training images of resnets' split, uint8 at 32 px), in rounds,
each round in another order:
  bare          the model, the same optimizer (fused), cross-entropy, forward/backward/step/zero_grad over batches
                made beforehand, each normalised from uint8 in the step, as the trainer does;
  train_epoch   the trainer's own `train_one_epoch` and `TrainStep` over the same batches (lr schedule, the step's
                statistics, the non-finite guard, the running metrics: everything but the input pipeline);
  resnets.train `resnets.train(epochs=2)` on the digits with its defaults, the last epoch's img/s from its history:
                the input pipeline (per-image crop in the loader) and the reporting included; --train-option
                KEY=VALUE (repeatable) passes options of its own (they then shape every contender's settings).
The optimizer settings and batch size of all three are those `resnets.train` resolved for the digits (its
config.yaml): the comparison follows the defaults when they change. The issue's bar: within 5% of bare.
Appends one JSON line to benchmarks/results/<date>-cpu-trainer-overhead.jsonl (--results). torch's threads are
left at its default. A measurement script for BENCHMARKS.md, not part of the package.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

import resnets
from resnets.data.datasets import digits_images, stratified_split
from resnets.models import build_model, get_config
from resnets.training.checkpoint import newest_checkpoint
from resnets.training.config import TrainConfig, make_config
from resnets.training.epoch import Progress, train_one_epoch
from resnets.training.step import make_train_step

HERE = Path(__file__).resolve().parent
# the optimizer each --opt names, with the arguments it takes from the config
OPTIMIZERS: dict[str, Callable[[Any, TrainConfig, float], torch.optim.Optimizer]] = {
    "sgd": lambda params, c, lr: torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                                 fused=True),
    "nesterov": lambda params, c, lr: torch.optim.SGD(params, lr=lr, momentum=c.momentum, nesterov=True,
                                                      weight_decay=c.weight_decay, fused=True),
    "adamw": lambda params, c, lr: torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay, fused=True),
    "adam": lambda params, c, lr: torch.optim.Adam(params, lr=lr, weight_decay=c.weight_decay, fused=True),
}


def train_run(model: str, work: Path, seed: int, options: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One `resnets.train` on the digits: the last epoch's img/s and the run's resolved config."""
    result = resnets.train(**{"model": model, "epochs": 2, "output": str(work), "seed": seed, "progress": False,
                              **options})
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    history = newest_checkpoint(result.run_dir)[1]["history"]
    return float(history[-1]["images_per_second"]), config


def digit_batches(batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """resnets' training split of the digits in one seeded order, as whole uint8 batches (the last partial one
    dropped, as the trainer drops it)."""
    images, labels = digits_images()  # (N, 3, 32, 32) uint8
    train, _ = stratified_split(labels, [str(d) for d in range(10)], 0.2, seed)
    order = torch.tensor(train)[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))]
    x, y = images[order], torch.tensor(labels)[order]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(order) - batch_size + 1, batch_size)]


class Bare:
    """The loop with nothing but the work: normalise, forward, loss, backward, step."""

    def __init__(self, model_name: str, cfg: TrainConfig, lr: float):
        self.model = build_model(model_name, num_classes=10).train()
        self.optimizer = OPTIMIZERS[cfg.opt](self.model.parameters(), cfg, lr)
        pretrained_cfg = get_config(model_name).default_pretrained_cfg()
        self.mean = torch.tensor(pretrained_cfg.mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(pretrained_cfg.std).view(1, -1, 1, 1) * 255

    def epoch(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for images, labels in batches:
            x = images.float().sub_(self.mean).div_(self.std)  # (x / 255 - mean) / std, in two passes
            loss = F.cross_entropy(self.model(x), labels)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class TrainerEpoch:
    """The trainer's `train_one_epoch` over the same batches, with the step `resnets train` builds on the CPU."""

    def __init__(self, model_name: str, cfg: TrainConfig):
        self.cfg = cfg
        model = build_model(model_name, num_classes=10)
        self.step = make_train_step(model, cfg, get_config(model_name).default_pretrained_cfg(), torch.device("cpu"),
                                    amp="off", channels_last=False)
        self.progress = Progress()

    def epoch(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        # the schedule's clock stays within the run's epochs; the rate of the lr does not change the speed
        self.progress.start_epoch(1)
        train_one_epoch(self.step, batches, self.cfg, self.progress, lambda: None, len(batches))


def timed(fn: Callable[[], None], images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20", help="[default: cifar_resnet20]")
    p.add_argument("--rounds", type=int, default=5, help="[default: 5]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train-run", action="store_true", help="skip the whole resnets.train runs")
    p.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a resnets.train keyword, the value read as YAML, e.g. in_memory=true (repeatable)")
    p.add_argument("--results", default=None,
                   help="JSON lines appended [default: benchmarks/results/<date>-cpu-trainer-overhead.jsonl]")
    a = p.parse_args()
    if any("=" not in item for item in a.train_option):
        p.error("--train-option takes KEY=VALUE")
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in a.train_option)}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as work:
        # The settings every contender uses: the ones resnets.train resolves for the digits (also its warm-up).
        _, config = train_run(a.model, Path(work), a.seed, options)
        lr = float(config.get("resolved_lr", config["lr"]))  # --lr auto resolves to a number at the start
        cfg = make_config({**{k: v for k, v in config.items() if k in TrainConfig.field_names()}, "lr": lr})
        batches = digit_batches(cfg.batch_size, a.seed)
        images = len(batches) * cfg.batch_size
        bare, trainer = Bare(a.model, cfg, lr), TrainerEpoch(a.model, cfg)
        contenders: dict[str, Callable[[], float]] = {
            "bare": lambda: timed(lambda: bare.epoch(batches), images),
            "train_epoch": lambda: timed(lambda: trainer.epoch(batches), images)}
        if not a.no_train_run:
            contenders["resnets.train"] = lambda: train_run(a.model, Path(work), a.seed, options)[0]
        for name in ("bare", "train_epoch"):  # warm-up: first-call allocations, the fused kernels' first use
            contenders[name]()
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                rates[name].append(contenders[name]())
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()) + " img/s",
                  file=sys.stderr)
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratios = {name: median[name] / median["bare"] for name in median if name != "bare"}
    row = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
               command=shlex.join(["python", os.path.relpath(__file__), *sys.argv[1:]]), model=a.model,
               train_options=options, batch_size=cfg.batch_size, opt=cfg.opt, lr=lr, images_per_epoch=images,
               threads=torch.get_num_threads(), cpus=os.cpu_count(), torch=torch.__version__,
               load_before=load_before, load_after=os.getloadavg()[0], rates=rates, median=median, ratios=ratios)
    results = Path(a.results or HERE / "results" / f"{datetime.date.today().isoformat()}-cpu-trainer-overhead.jsonl")
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{a.model}, batch {cfg.batch_size}, {cfg.opt} (fused), {torch.get_num_threads()} threads, median of "
          f"{a.rounds} rounds (load {load_before:.1f} -> {row['load_after']:.1f}):")
    for name, value in median.items():
        verdict = "" if name == "bare" else f"  {ratios[name]:.3f} of bare" + ("" if ratios[name] >= 0.95 else
                                                                             "  (more than 5% slower)")
        print(f"  {name:<14} {value:8.1f} img/s{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
