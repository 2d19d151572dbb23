"""Checkpoints, what `--resume` continues from: a run's weights, optimizer, progress and random state as plain
tensors and primitives (`torch.load(weights_only=True)`), written atomically, checksummed, rotated.

Files are `checkpoint-<epoch>-<step>.pt` in the run folder. Each holds a digest of its own content, so a bit
flip that still unpickles is caught too. The newest `keep` are kept; a new file is complete (renamed into
place) before an older one is removed.
"""
from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, content_digest, written_by_torch_save
from ..messages import one_line, warn
from ..models.metadata_schema import check_nesting
from .state_schema import MAX_DEPTH, as_tuple, check_resume_state

CHECKPOINT_GLOB = "checkpoint-*.pt"
_NAME = re.compile(r"^checkpoint-(\d+)-(\d+)\.pt$")
REQUIRED = {"model", "optimizer", "epoch", "batch_in_epoch", "global_step", "config", "history",
            "digest"}


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"checkpoint-{epoch:04d}-{global_step:09d}.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators from one seed (NumPy takes 32 bits of it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write the state atomically under its epoch/step name, then drop all but the newest `keep`."""
    state = {**state, "digest": content_digest({k: v for k, v in state.items() if k != "digest"})}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = atomic_write_bytes(run_dir / checkpoint_name(state["epoch"], state["global_step"]), buf.getvalue())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by the step in their names)."""
    files = [p for p in Path(run_dir).glob(CHECKPOINT_GLOB) if _NAME.match(p.name)]
    return sorted(files, key=lambda p: tuple(int(g) for g in _NAME.match(p.name).groups()))  # type: ignore[union-attr]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify one checkpoint; any damage is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not written_by_torch_save(path):
        raise CheckpointError(f"{path}: not a checkpoint (a run's checkpoint-*.pt, written by torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged files fail in many ways (zip, pickle, EOF); each means "unusable"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(state, dict) or not REQUIRED <= set(state):
        missing = sorted(REQUIRED - set(state)) if isinstance(state, dict) else "everything"
        raise CheckpointError(f"{path}: not a resnets checkpoint (missing {missing})")
    check_nesting(state, path, "the state", MAX_DEPTH)  # before the digest, whose walk is recursive
    if content_digest({k: v for k, v in state.items() if k != "digest"}) != state["digest"]:
        raise CheckpointError(f"{path}: content does not match its checksum (the file is damaged)")
    check_resume_state(state, path)  # a checksum is not a schema
    return state


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that loads and verifies; damaged newer ones are skipped with a warning."""
    files = list_checkpoints(run_dir)
    if not files:
        raise CheckpointError(f"{run_dir}: no checkpoint in this run folder")
    for path in reversed(files):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"{e}; trying the previous checkpoint")
    raise CheckpointError(f"{run_dir}: every checkpoint is damaged or unusable ({len(files)} tried)")


def find_checkpoint(resume: str, output: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """(run folder, file, state) for --resume auto | RUN_DIR | FILE."""
    if resume == "auto":
        runs = [d for d in Path(output).glob("*") if d.is_dir() and list_checkpoints(d)]
        if not runs:
            raise CheckpointError(f"--resume auto: no resumable run under {output}")
        runs.sort(key=lambda d: list_checkpoints(d)[-1].stat().st_mtime)
        for run_dir in reversed(runs):
            try:
                path, state = newest_checkpoint(run_dir)
                return run_dir, path, state
            except CheckpointError as e:
                warn(str(e))
        raise CheckpointError(f"--resume auto: no run under {output} has a usable checkpoint")
    path = Path(resume)
    if path.is_dir():
        file, state = newest_checkpoint(path)
        return path, file, state
    return path.parent, path, load_checkpoint(path)


def abandon_newer_checkpoints(run_dir: Path, resumed_from: Path) -> list[Path]:
    """Move checkpoints newer than the one resumed from into `abandoned/`: left in place, the rotation
    would delete the new ones first and a later `--resume auto` would pick the stale ones."""
    files = list_checkpoints(run_dir)
    if resumed_from not in files:
        return []
    newer = files[files.index(resumed_from) + 1:]
    moved = []
    for path in newer:
        target = run_dir / "abandoned" / path.name
        target.parent.mkdir(exist_ok=True)
        path.replace(target)
        moved.append(target)
    return moved


def remove_stray_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of writes that a crash interrupted (atomic_write names them `.<name>.<random>.tmp`)."""
    strays = [p for p in Path(run_dir).glob(".*.tmp") if p.is_file()]
    for p in strays:
        p.unlink(missing_ok=True)
    return strays
