"""What a resume state holds, how a run returns to it, and which run a torchrun restart continues."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .checkpoint import list_resume_files, seed_everything, set_rng_state
from .config import TrainConfig, make_config
from .sampling import _mix
from .steps import Progress, Run

# What a resumed run may change; every other option is the run's own (a changed lr or model would not be
# the same run any more). The number of processes may change too: it is not an option.
RESUME_OVERRIDABLE = {"epochs", "resume", "output", "device", "workers", "progress", "checkpoint_every",
                      "keep_checkpoints", "log_tensorboard", "patience", "skip_nonfinite", "max_bad_fraction",
                      "dist_timeout", "ddp_bucket_mb", "ddp_static_graph", "cache_dir", "compile", "compile_mode"}


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


def resume_state(run: Run, progress: Progress, history: list[dict[str, Any]], cfg: TrainConfig,
                 class_names: list[str], rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
                ema=run.ema.state_dict() if run.ema is not None else None, epoch=progress.epoch,
                batch_in_epoch=progress.batch_in_epoch, global_step=progress.global_step,
                progress=dataclasses.asdict(progress), history=history, config=cfg.to_dict(),
                class_names=list(class_names), world_size=run.dist.world_size, global_batch=run.global_batch,
                rng=rng_per_rank[0], rng_per_rank=rng_per_rank)


def restore(run: Run, state: dict[str, Any], seed: int) -> Progress:
    """Model, optimizer, scaler, EMA and RNG of `state` into `run`; the progress to go on from."""
    run.model.load_state_dict(state["model"])
    # How to step is this machine's choice, not the saved one's; set before loading, since loading places
    # Adam's step counters on the parameters' device only for groups that say fused
    mine = {k: run.optimizer.defaults[k] for k in ("fused", "foreach") if k in run.optimizer.defaults}
    saved = state["optimizer"]
    run.optimizer.load_state_dict({**saved, "param_groups": [{**g, **mine} for g in saved["param_groups"]]})
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    progress = Progress(**state["progress"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if len(per_rank) == run.dist.world_size:
        set_rng_state(per_rank[run.dist.rank])
    else:
        # Another number of processes: the RNG streams (dropout, mixup) cannot continue one to one; each
        # rank starts a fresh stream that is still a function of the run's seed and position.
        seed_everything(_mix(seed, run.dist.rank, progress.global_step))
    if state.get("global_batch") not in (None, run.global_batch):
        progress.batch_in_epoch = progress.samples_in_epoch // run.global_batch
    return progress


def elastic_restart_target(output: str | Path, run_id: str | None) -> Path | None:
    """The run directory that an earlier attempt of this torchrun job (same run id) wrote a resume state
    to, newest first; None when it wrote none (the restart then starts afresh)."""
    if not run_id:
        return None
    found = []
    for config in Path(output).glob("*/config.yaml"):
        try:
            saved = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        files = list_resume_files(config.parent)
        if isinstance(saved, dict) and saved.get("elastic_run_id") == run_id and files:
            found.append((files[-1].stat().st_mtime, config.parent))
    return max(found)[1] if found else None

