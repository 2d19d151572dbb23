"""The resume state: plain tensors and primitives only, so it loads with `torch.load(weights_only=True)`."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes

RESUME_FILE = "checkpoint.pt"


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


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_resume_state(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_resume_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / RESUME_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here (expected a run directory or its {RESUME_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged files fail in many ways; each means "cannot resume from this file"
        raise CheckpointError(f"{path}: not a readable resume state ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]})") from None
    required = {"model", "optimizer", "scheduler", "epoch", "config", "history"}
    if not isinstance(state, dict) or not required <= set(state):
        raise CheckpointError(f"{path}: not a resnets resume state (missing {sorted(required - set(state or {}))})")
    return state
