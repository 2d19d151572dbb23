"""Time to accuracy on the CPU: resnets' defaults against two plain PyTorch loops, same folders, same epochs.

    python benchmarks/time_to_accuracy.py [--cases tiny,grey32] [--models cifar_resnet20] [--epochs 5]
        [--contenders tutorial,torchvision-recipe,resnets] [--repeat 1] [--resnets-args "--hflip 0"]

Each (case, model, contender) trains in a process of its own, its wall time measured around that process
(start-up included: what a user waits for), and appends one JSON line to
benchmarks/results/<date>-time-to-accuracy.jsonl (--results); a markdown table and the issue's goal per case
(resnets' best val top-1 at least the best peer's, in less wall time than every peer) follow at the end.
The folders are built by digit_folders.py (train/ and val/ given, the same files for every contender).

Contenders, each given the same seed (--seed, plus the repeat's number):
  tutorial            ImageFolder, Resize to the model's input size, ToTensor, ImageNet Normalize; Adam lr 1e-4,
                      batch 32, no augmentation; validates every epoch, keeps the best epoch's weights.
  torchvision-recipe  references/classification/train.py's defaults at the folder's scale: SGD lr 0.1, momentum 0.9,
                      weight decay 1e-4 (every parameter), batch 32, StepLR(30, 0.1) per epoch; RandomResizedCrop
                      (model size) + flip; eval Resize(size / 0.875) + CenterCrop(size); ImageNet normalisation.
  resnets             `resnets train --data-dir CASE --model M --epochs E --output TMP`, nothing else; best val
                      top-1 from the run's metrics.json, img/s from its history (the newest checkpoint's).
                      Each --resnets-args "ARGS" adds a contender `resnets ARGS` (a recipe variant).
The plain loops take the model a tutorial user would: torchvision's resnet18 (weights=None), and resnets'
cifar_resnet20 for the CIFAR net (torchvision has none): the same architecture for every contender.

The plain loops load with DataLoader(num_workers=2): the PyTorch tutorials set 2 (the CIFAR-10 one) or 4 (transfer
learning), and 4 processes on 2 cores would only queue; 2 is also what resnets picks on this machine (its cores,
at most 8, when training on the CPU). torch's threads are left at its default (the cores: 2). "train img/s" is
images trained over the time of the training loops (waiting for data included, validation not), over all epochs.
Run it on a quiet machine: with other work on the two cores, torch's two threads wait for each other at every op
(cifar_resnet20, batch 64: 6-29 img/s with two threads against 87-148 with one, at a load average of 9), and
wall times and rates say more about the neighbours than about the contenders. Each row records the load average.
A measurement script for BENCHMARKS.md, not part of the package.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import resnets
from digit_folders import CASES, build_case, describe, read_manifest

HERE = Path(__file__).resolve().parent
PEERS = ("tutorial", "torchvision-recipe")
CONTENDERS = (*PEERS, "resnets")
MODELS = ("cifar_resnet20", "resnet18")
# What each model trains on by default: resnet18 runs at 224 px, 25-40 img/s on two quiet cores by the issue's
# figure (5-8 measured here at a load average of 2.4), so only the two small folders; the CIFAR net (32 px) runs on
# every case.
PLAN = {"cifar_resnet20": ("grey32", "colour64", "small-imbalanced", "tiny"), "resnet18": ("tiny", "colour128-small")}
SMALL_CASES = ("tiny",)  # for a model the plan does not name
# (train, eval) img/s of each model on two quiet cores, and a process's start-up: for the estimate only (the CIFAR
# net's training rate is the digits' 268 img/s that training/config.py quotes)
RATES = {"cifar_resnet20": (250.0, 900.0), "resnet18": (30.0, 90.0)}
START_UP_S = 6.0
WORKERS = 2
BATCH = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- the plain PyTorch loops (run in a child process: `--one CONTENDER`) ----

def input_size(model_name: str) -> int:
    return int(resnets.get_config(model_name).default_pretrained_cfg().input_size[-1])


def plain_model(name: str, num_classes: int) -> torch.nn.Module:
    """Where a tutorial user gets the model: torchvision when it has the architecture, else resnets."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return resnets.create_model(name, num_classes=num_classes)


def tutorial_setup(size: int, model: torch.nn.Module) -> tuple[Callable, Callable, torch.optim.Optimizer, Any]:
    """(train transform, eval transform, optimizer, scheduler or None)."""
    from torchvision import transforms as T

    plain = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return plain, plain, torch.optim.Adam(model.parameters(), lr=1e-4), None


def recipe_setup(size: int, model: torch.nn.Module) -> tuple[Callable, Callable, torch.optim.Optimizer, Any]:
    """torchvision's ClassificationPresetTrain/Eval (PIL backend) and optimizer at train.py's defaults. Its
    other defaults change nothing here: no warm-up, label smoothing, mixup, EMA or auto-augment."""
    from torchvision import transforms as T

    bilinear = T.InterpolationMode.BILINEAR
    finish = [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = T.Compose([T.RandomResizedCrop(size, interpolation=bilinear, antialias=True),
                       T.RandomHorizontalFlip(0.5), *finish])
    # the reference's 256 / 224 for ImageNet, i.e. crop_pct 0.875
    evaluate = T.Compose([T.Resize(int(size / 0.875), interpolation=bilinear, antialias=True), T.CenterCrop(size),
                          *finish])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return train, evaluate, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)


SETUPS = {"tutorial": tutorial_setup, "torchvision-recipe": recipe_setup}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def val_top1(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


def plain_run(contender: str, data_dir: Path, model_name: str, epochs: int, seed: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from torchvision import datasets

    seed_all(seed)
    size = input_size(model_name)
    train_set = datasets.ImageFolder(data_dir / "train")
    val_set = datasets.ImageFolder(data_dir / "val")
    model = plain_model(model_name, len(train_set.classes))
    train_set.transform, val_set.transform, optimizer, scheduler = SETUPS[contender](size, model)
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val_set, batch_size=BATCH, shuffle=False, num_workers=WORKERS)
    criterion = torch.nn.CrossEntropyLoss()
    history, best, best_epoch, best_weights = [], -1.0, 0, None
    for epoch in range(1, epochs + 1):
        model.train()
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
        train_s = time.perf_counter() - start
        if scheduler is not None:
            scheduler.step()
        start = time.perf_counter()
        top1 = val_top1(model, val_loader)
        history.append(dict(epoch=epoch, train_loss=loss_sum / seen, train_images=seen, train_s=train_s,
                            img_s=seen / train_s, val_top1=top1, val_s=time.perf_counter() - start))
        if top1 > best:  # the tutorials' "deep copy the model" of the best epoch
            best, best_epoch, best_weights = top1, epoch, copy.deepcopy(model.state_dict())
        print(f"epoch {epoch}/{epochs} loss {loss_sum / seen:.4f} val top1 {top1:.2f} {seen / train_s:.0f} img/s",
              file=sys.stderr)
    model.load_state_dict(best_weights)
    return dict(best_val_top1=best, best_epoch=best_epoch, history=history, threads=torch.get_num_threads(),
                workers=WORKERS, batch_size=BATCH, img_size=size, train_images=len(train_set),
                val_images=len(val_set))


# ---- the parent: folders, commands, timing, results ----

def command(contender: str, data_dir: Path, model: str, epochs: int, seed: int, output: Path) -> list[str]:
    """The argv of one contender's run. `output`: resnets' --output, or the plain loop's result file."""
    if contender.startswith("resnets"):
        exe = Path(sys.executable).with_name("resnets")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "resnets"]
        argv += ["train", "--data-dir", str(data_dir), "--model", model, "--epochs", str(epochs),
                 "--output", str(output)]
        argv += shlex.split(contender[len("resnets"):])
        return argv + (["--seed", str(seed)] if seed else [])  # seed 0 is its default: the bare command
    return [sys.executable, str(Path(__file__).resolve()), "--one", contender, "--data-dir", str(data_dir),
            "--model", model, "--epochs", str(epochs), "--seed", str(seed), "--result", str(output)]


def shown(argv: list[str]) -> str:
    """The command as a user types it: `resnets ...` and `python benchmarks/...`."""
    words = list(argv)
    if Path(words[0]).name == "resnets":
        words[0] = "resnets"
    elif words[:3] == [sys.executable, "-m", "resnets"]:
        words[:3] = ["python", "-m", "resnets"]
    else:
        words[0] = "python"
        words[1] = os.path.relpath(words[1])
    return shlex.join(words)


def resnets_outcome(output: Path) -> dict[str, Any]:
    """Best val top-1 and per-epoch figures of the one run folder under `output`."""
    import yaml
    from resnets.training.checkpoint import newest_checkpoint

    (run_dir,) = [d for d in output.iterdir() if d.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = newest_checkpoint(run_dir)[1]["history"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # what its defaults resolved to, all of it
    return dict(best_val_top1=metrics["best_top1"], best_epoch=metrics["best_epoch"], resnets_config=config,
                train_images=metrics["train_samples"], val_images=metrics["val_samples"],
                history=[dict(epoch=r["epoch"], train_loss=r["train_loss"], img_s=r["images_per_second"],
                              val_top1=r["val_top1"]) for r in history])


def run_one(contender: str, case: str, data_dir: Path, model: str, epochs: int, seed: int, work: Path,
            keep: bool) -> dict[str, Any]:
    output = Path(tempfile.mkdtemp(prefix=f"{case}-{model}-", dir=work))
    result_file = output / "result.json"
    argv = command(contender, data_dir, model, epochs, seed, output if contender.startswith("resnets")
                   else result_file)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    row: dict[str, Any] = dict(case=case, model=model, contender=contender, epochs=epochs, seed=seed,
                               command=shown(argv), wall_s=round(wall, 2), load_before=load_before,
                               load_after=os.getloadavg()[0], returncode=done.returncode)
    if done.returncode != 0:
        row["error"] = done.stderr[-2000:]
    else:
        outcome = resnets_outcome(output) if contender.startswith("resnets") else json.loads(result_file.read_text())
        rates = [r["img_s"] for r in outcome["history"]]
        # every epoch trains the same number of images: the rate over all of them is the harmonic mean
        row.update(outcome, train_img_s=round(statistics.harmonic_mean(rates), 2))
    if not keep:
        shutil.rmtree(output, ignore_errors=True)
    return row


def plan(models: list[str], cases: list[str] | None) -> list[tuple[str, str]]:
    """(case, model) pairs: the given cases for every model, else each model's default cases."""
    return [(c, m) for m in models for c in (cases or PLAN.get(m, SMALL_CASES))]


def estimate_s(pairs: list[tuple[str, str]], folders: dict[str, Path], contenders: list[str], epochs: int) -> float:
    total = 0.0
    for case, model in pairs:
        m = read_manifest(folders[case])
        train_rate, eval_rate = RATES.get(model, RATES["resnet18"])
        one = START_UP_S + epochs * (m["train"] / train_rate + m["val"] / eval_rate)
        total += one * len(contenders) + m["val"] / eval_rate  # resnets' final report evaluates once more
    return total


def table(rows: list[dict[str, Any]]) -> str:
    """Mean over the repeats (min-max when more than one) of each (case, model, contender)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["model"], r["contender"]), []).append(r)
    lines = ["| case | model | contender | best val top-1 | wall s | train img/s |", "|---|---|---|---|---|---|"]
    for (case, model, contender), runs in groups.items():
        ok = [r for r in runs if r["returncode"] == 0]
        if not ok:
            lines.append(f"| {case} | {model} | {contender} | failed | | |")
            continue
        cells = [_cell([r[k] for r in ok], digits) for k, digits in
                 (("best_val_top1", 2), ("wall_s", 1), ("train_img_s", 1))]
        lines.append(f"| {case} | {model} | {contender} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _cell(values: list[float], digits: int) -> str:
    mean = f"{statistics.fmean(values):,.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """Per (case, model) and resnets contender: its mean best top-1 >= the best peer's, its mean wall < each peer's."""
    means: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for key in dict.fromkeys((r["case"], r["model"], r["contender"]) for r in rows):  # in the order run
        ok = [r for r in rows if (r["case"], r["model"], r["contender"]) == key and r["returncode"] == 0]
        if ok:
            means.setdefault(key[:2], {})[key[2]] = (statistics.fmean(r["best_val_top1"] for r in ok),
                                                     statistics.fmean(r["wall_s"] for r in ok))
    out = []
    for (case, model), by in means.items():
        peers = {c: v for c, v in by.items() if c in PEERS}
        if not peers:
            continue
        best_peer = max(peers, key=lambda c: peers[c][0])
        fastest_peer = min(peers, key=lambda c: peers[c][1])
        for contender, (top1, wall) in by.items():
            if contender in PEERS:
                continue
            accurate = top1 >= peers[best_peer][0]
            faster = wall < peers[fastest_peer][1]
            out.append(f"{case} / {model} / {contender}: {'met' if accurate and faster else 'NOT met'} "
                       f"(top-1 {top1:.2f} vs {peers[best_peer][0]:.2f} {best_peer}; "
                       f"wall {wall:.1f} s vs {peers[fastest_peer][1]:.1f} s {fastest_peer})")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    each = "; ".join(f"{m}: {', '.join(c)}" for m, c in PLAN.items())
    p.add_argument("--cases", default=None, help=f"comma-separated, of {', '.join(CASES)}, for every model "
                                                 f"(default: each model's own, {each})")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated [default: {','.join(MODELS)}]")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated [default: all]")
    p.add_argument("--resnets-args", action="append", default=[], metavar="ARGS",
                   help='adds the contender `resnets ARGS`, e.g. "--hflip 0" (repeatable); the bare defaults run '
                        "as long as --contenders names resnets")
    p.add_argument("--epochs", type=int, default=5, help="[default: 5]")
    p.add_argument("--repeat", type=int, default=1, help="runs of each, seeds --seed, --seed+1, ... [default: 1]")
    p.add_argument("--seed", type=int, default=0, help="[default: 0]")
    p.add_argument("--data-root", default=str(Path.home() / ".cache" / "resnets" / "digit-folders"),
                   help="where the case folders are built (reused when unchanged) [default: %(default)s]")
    p.add_argument("--results", default=None, help="JSON lines appended [default: "
                                                   "benchmarks/results/<date>-time-to-accuracy.jsonl]")
    p.add_argument("--work", default=None, help="folder for the runs' output [default: a temporary folder]")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders and result files under --work")
    p.add_argument("--dry-run", action="store_true", help="build the folders, print the plan and its estimate, stop")
    # a child process: one plain loop, its result as JSON into --result
    p.add_argument("--one", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        result = plain_run(a.one, Path(a.data_dir), a.model, a.epochs, a.seed)
        Path(a.result).write_text(json.dumps(result))
        return 0

    cases = a.cases.split(",") if a.cases else None
    models = a.models.split(",")
    contenders = [c for c in a.contenders.split(",") if c]
    unknown = ([c for c in cases or () if c not in CASES] + [c for c in contenders if c not in CONTENDERS]
               + [m for m in models if m not in resnets.list_models()])
    if unknown:
        p.error(f"unknown case, contender or model: {', '.join(unknown)}")
    contenders += [v for v in (f"resnets {args.strip()}".strip() for args in a.resnets_args) if v not in contenders]
    pairs = plan(models, cases)
    folders = {case: build_case(case, a.data_root, seed=0) for case in sorted({c for c, _ in pairs})}
    results = Path(a.results or HERE / "results" / f"{datetime.date.today().isoformat()}-time-to-accuracy.jsonl")
    results.parent.mkdir(parents=True, exist_ok=True)
    runs = len(pairs) * len(contenders) * a.repeat
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
              f"wall times and img/s will not compare with a quiet run's", file=sys.stderr)
    print(f"{runs} runs of {a.epochs} epochs: {', '.join(f'{c}/{m}' for c, m in pairs)} x {', '.join(contenders)}"
          f"; estimate ~{a.repeat * estimate_s(pairs, folders, contenders, a.epochs) / 60:.1f} min on two quiet "
          f"cores (load now {os.getloadavg()[0]:.1f}); results to {results}", file=sys.stderr)
    if a.dry_run:
        for case, model in pairs:
            print(f"{model} on {describe(folders[case])}")
        return 0
    work = Path(a.work or tempfile.mkdtemp(prefix="time-to-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    common = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                  threads=torch.get_num_threads(), cpus=os.cpu_count(),
                  benchmark=shlex.join(["python", os.path.relpath(__file__), *sys.argv[1:]]))
    for repeat in range(a.repeat):
        order = contenders[repeat % len(contenders):] + contenders[:repeat % len(contenders)]  # no fixed first
        for case, model in pairs:
            for contender in order:
                row = {**common, "repeat": repeat, **run_one(contender, case, folders[case], model, a.epochs,
                                                             a.seed + repeat, work, a.keep_runs)}
                rows.append(row)
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                figures = (f"top-1 {row['best_val_top1']:.2f}, {row['train_img_s']:.0f} img/s"
                           if row["returncode"] == 0 else f"FAILED ({row['returncode']}): {row['error'][-300:]}")
                print(f"[{time.perf_counter() - started:6.0f} s] {case} {model} {contender}: {figures}, "
                      f"wall {row['wall_s']:.1f} s", file=sys.stderr)
    if not a.keep_runs and a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print()
    print("\n".join(f"- {line}" for line in goals(rows)))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
