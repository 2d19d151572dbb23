"""Continuing a run: which checkpoint (--resume, or the one a failed torchrun attempt wrote), which options a
resume may change, and how the live objects return to a checkpoint's state."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.datasets import DataSplits
from ..errors import CheckpointError, ConfigError, TrainingError
from ..messages import one_line, warn
from .checkpoint import find_checkpoint, list_checkpoints, load_checkpoint, seed_everything, set_rng_state
from .config import TrainConfig, make_config
from .distributed import Distributed, elastic_restart_count, elastic_run_id
from .epoch import Progress
from .run_dir import REPORT_FILE
from .sampling import _mix
from .step import TrainStep

# What a resumed run may change; every other option is the run's own (a changed lr or model would not be
# the same run any more). The number of processes may change too: it is not an option.
# data_dir too: the data's identity, checked on resume, says whether a moved folder still holds the run's data
RESUME_OVERRIDABLE = {"epochs", "resume", "resume_on_changed_data", "data_dir", "output", "device", "workers",
                      "progress", "checkpoint_every", "keep_checkpoints", "log_tensorboard", "patience",
                      "skip_nonfinite", "max_bad_fraction", "max_image_mb", "dist_timeout", "ddp_bucket_mb",
                      "ddp_static_graph", "cache_dir", "compile", "compile_mode"}


@dataclass
class Resumed:
    """The checkpoint a run continues from."""

    run_dir: Path
    file: Path
    state: dict[str, Any]

    def config(self, cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
        """The run's own options, with the explicitly given ones a resume may change (see `resumed_config`).
        A run whose epochs are all trained resumes only to write its final report, if that is missing (a
        stop between the last checkpoint and the report)."""
        resumed = resumed_config(cfg, self.state, explicit)
        if self.state["progress"]["epoch"] > resumed.epochs and (self.run_dir / REPORT_FILE).exists():
            raise TrainingError(f"{self.run_dir} has already trained {self.state['progress']['epoch'] - 1} epochs; "
                                f"raise --epochs to train on")
        return resumed

    def restore(self, step: TrainStep, cfg: TrainConfig) -> tuple[Progress, list[dict[str, Any]]]:
        """`restore` this state into `step`: the progress and history to go on from. What state_schema could not
        foresee (an optimizer's own keys) is still one error naming the file, never a traceback."""
        try:
            return restore(step, self.state, cfg), list(self.state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{self.file}: not a usable resume state for this run "
                                  f"({type(e).__name__}: {one_line(e)})") from None

    def check_data(self, now: dict[str, Any], cfg: TrainConfig) -> None:
        """The data must be the run's (`now`: its `data_identity`): a renamed class folder re-indexes the labels (a
        trained head row would now mean another class) and a file added or removed changes the split.
        ConfigError saying what changed, unless --resume-on-changed-data (and the head still fits)."""
        saved = self.state.get("data") or {"classes": self.state.get("class_names")}
        changes = data_changes(saved, now)
        if not changes:
            return
        if saved.get("classes") is not None and len(saved["classes"]) != len(now["classes"]):
            raise ConfigError(f"--resume {self.run_dir}: the data changed since the checkpoint ({changes}); the "
                              f"model was trained for {len(saved['classes'])} classes, the data has "
                              f"{len(now['classes'])}: train a new run (--pretrained {self.run_dir} starts from it)")
        if not cfg.resume_on_changed_data:
            raise ConfigError(f"--resume {self.run_dir}: the data changed since the checkpoint ({changes}); put it "
                              f"back as it was, or pass --resume-on-changed-data to go on with the data as it is")
        warn(f"resuming on changed data ({changes}), as --resume-on-changed-data asks")


def data_identity(splits: DataSplits, data_dir: str | None) -> dict[str, Any]:
    """What a run trains and validates on, kept in each checkpoint: the classes, the sizes of the splits, and a
    digest of their (file relative to the data folder, label) lists (of the labels alone for data without files)."""
    digest = hashlib.sha256()
    # Paths relative to the data folder, so that a folder moved (and --data-dir with it) is the same data; a
    # prefix cut, since os.path.relpath costs ~8 s per million files
    prefix = os.path.join(os.path.abspath(data_dir), "") if data_dir else ""
    for name, part, labels in (("train", splits.train, splits.train_labels), ("val", splits.val, splits.val_labels)):
        digest.update(f"[{name}]\n".encode())
        samples = getattr(part, "samples", None) or [("", label) for label in labels]
        for path, label in samples:
            path = os.path.abspath(path) if prefix and not os.path.isabs(path) else path
            rel = path[len(prefix):] if prefix and path.startswith(prefix) else path
            digest.update(f"{rel}\t{label}\n".encode(errors="surrogateescape"))
    return dict(classes=list(splits.class_names), train=len(splits.train), val=len(splits.val),
                digest=digest.hexdigest())


def data_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two `data_identity` records, in words; "" when nothing does."""
    changes = []
    if saved.get("classes") is not None and list(saved["classes"]) != now["classes"]:
        before, after = set(saved["classes"]), set(now["classes"])
        gone, new = sorted(before - after), sorted(after - before)
        what = [f"{label} {', '.join(map(repr, names))}" for label, names in (("gone:", gone), ("new:", new)) if names]
        changes.append(f"classes {'; '.join(what) if what else 'in another order'}")
    for split in ("train", "val"):
        if split in saved and saved[split] != now[split]:
            changes.append(f"{split} images {saved[split]:,} -> {now[split]:,}")
    if not changes and "digest" in saved and saved["digest"] != now["digest"]:
        changes.append("other files or labels, as many as before")
    return "; ".join(changes)


def locate_resume(cfg: TrainConfig, ctx: Distributed) -> Resumed | None:
    """What to continue from: --resume, or after a torchrun restart the run the failed attempt wrote. Rank 0
    picks (and warns about damaged files); the other ranks load the file it names."""
    def pick() -> Resumed | None:
        target = cfg.resume
        if target is None and elastic_restart_count() > 0:
            found = elastic_restart_target(cfg.output, elastic_run_id())
            target = str(found) if found else None
            print(f"torchrun restart {elastic_restart_count()}: "
                  f"{f'resuming {found}' if found else 'no checkpoint of the failed attempt, starting afresh'}",
                  file=sys.stderr)
        return Resumed(*find_checkpoint(target, cfg.output)) if target is not None else None

    picked = ctx.on_main(pick, share=lambda r: dataclasses.replace(r, state={}) if r else None)
    if picked is not None and not ctx.is_main:
        picked.state = load_checkpoint(picked.file)
    return picked


def resumed_config(cfg: TrainConfig, state: dict[str, Any], explicit: set[str]) -> TrainConfig:
    """The saved run's options, with the explicitly given ones a resume may change; others are an error."""
    saved = make_config({k: v for k, v in state["config"].items() if k in TrainConfig.field_names()})
    conflicting = sorted(k for k in explicit - RESUME_OVERRIDABLE if getattr(cfg, k) != getattr(saved, k))
    if conflicting:
        raise ConfigError(f"--resume continues a run with its own options; these differ from it: "
                          f"{', '.join(conflicting)} (only {', '.join(sorted(RESUME_OVERRIDABLE - {'resume'}))} "
                          f"may change)")
    keep = {k: getattr(cfg, k) for k in (explicit & RESUME_OVERRIDABLE) | {"resume", "output"}}
    if keep.get("compile") is False and "compile_mode" not in keep:
        keep["compile_mode"] = "default"  # --no-compile drops the saved run's compile mode with it
    return dataclasses.replace(saved, **keep).resolved()


def checkpoint_state(step: TrainStep, progress: Progress, history: list[dict[str, Any]], cfg: TrainConfig,
                     data: dict[str, Any], rng_per_rank: list[dict[str, Any]],
                     ema_buffers_per_rank: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a checkpoint holds: plain tensors and primitives only. `data`: the data's `data_identity`;
    `*_per_rank`: each process's own random state and EMA buffers, in rank order."""
    return dict(model=step.model.state_dict(), optimizer=step.optimizer.state_dict(),
                scaler=step.scaler.state_dict(), ema=step.ema.state_dict() if step.ema is not None else None,
                epoch=progress.epoch, batch_in_epoch=progress.batch_in_epoch, global_step=progress.global_step,
                progress=dataclasses.asdict(progress), history=history, config=cfg.to_dict(),
                class_names=list(data["classes"]), data=data, world_size=step.dist.world_size,
                global_batch=step.dist.world_size * cfg.batch_size, rng=rng_per_rank[0], rng_per_rank=rng_per_rank,
                ema_buffers_per_rank=ema_buffers_per_rank)


def restore(step: TrainStep, state: dict[str, Any], cfg: TrainConfig) -> Progress:
    """Model, optimizer, scaler, EMA and RNG of `state` into `step`; the progress to go on from."""
    step.model.load_state_dict(state["model"])
    # How to step is this machine's choice, not the saved one's; set before loading, since loading places
    # Adam's step counters on the parameters' device only for groups that say fused
    mine = {k: step.optimizer.defaults[k] for k in ("fused", "foreach") if k in step.optimizer.defaults}
    saved = state["optimizer"]
    step.optimizer.load_state_dict({**saved, "param_groups": [{**g, **mine} for g in saved["param_groups"]]})
    if state.get("scaler"):
        step.scaler.load_state_dict(state["scaler"])
    ctx = step.dist
    if step.ema is not None and state.get("ema"):
        step.ema.load_state_dict(state["ema"])  # rank 0's; each rank's own buffers where the ranks are the same
        ema_buffers = state.get("ema_buffers_per_rank")
        if ema_buffers and len(ema_buffers) == ctx.world_size:
            for name, buffer in step.ema.module.named_buffers():
                saved = ema_buffers[ctx.rank][name]
                if not torch.is_tensor(saved) or saved.shape != buffer.shape:  # copy_ would broadcast a wrong one
                    raise ValueError(f"ema_buffers_per_rank[{ctx.rank}][{name!r}] is not a tensor of "
                                     f"{tuple(buffer.shape)}")
                buffer.copy_(saved)
    progress = Progress(**state["progress"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if len(per_rank) == ctx.world_size:
        set_rng_state(per_rank[ctx.rank])
    else:
        # Another number of processes: the RNG streams (dropout, mixup) cannot continue one to one; each
        # rank starts a fresh stream that is still a function of the run's seed and position.
        seed_everything(_mix(cfg.seed, ctx.rank, progress.global_step))
    global_batch = cfg.batch_size * ctx.world_size
    if state.get("global_batch") not in (None, global_batch):
        progress.batch_in_epoch = progress.samples_in_epoch // global_batch
    return progress


def elastic_restart_target(output: str | Path, run_id: str | None) -> Path | None:
    """The run folder that an earlier attempt of this torchrun job (same run id) wrote a checkpoint to, newest
    first; None when it wrote none (the restart then starts afresh)."""
    if not run_id:
        return None
    found = []
    for config in Path(output).glob("*/config.yaml"):
        try:
            saved = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        files = list_checkpoints(config.parent)
        if isinstance(saved, dict) and saved.get("elastic_run_id") == run_id and files:
            found.append((files[-1].stat().st_mtime, config.parent))
    return max(found)[1] if found else None
