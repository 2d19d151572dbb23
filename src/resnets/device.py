"""The machine a command runs on: which device, how many loader processes, which autocast."""
from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError


def resolve_device(device: str | None) -> torch.device:
    """`--device`: None or "auto" picks CUDA when there is a GPU, else the CPU; "cpu", "cuda", "cuda:N"."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: resnets runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda asked for, but no CUDA GPU is available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device_type: str | None) -> int:
    """`-j`, the loader (or decoding) processes, when not given: every core of this process's share (under
    torchrun the node's cores are split between its LOCAL_WORLD_SIZE processes), capped by what else runs.

    Feeding a GPU: at most 16, since fewer workers could not decode as fast as a compiled ResNet-50 step
    trains on an H100 (BENCHMARKS.md, "Input pipeline"). Feeding a model on the CPU ("cpu"): at most 8, since
    every worker takes a core from the model's threads. Nothing else running (None: `check-data` only
    decodes): all of them.
    `-j 0` everywhere means "in this process"."""
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cap = {"cuda": 16, "cpu": 8, None: cores}[device_type]
    return max(1, min(cap, cores))


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise ConfigError(f"-j/--workers must be >= 0 (0: load in this process), got {workers}")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}  # --amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (and bf16 on the CPU when asked); a no-op for "off"."""
    dtype = AMP_DTYPES[amp]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (random crop boxes, flips, an epoch's order) on `device` without a host sync:
    `.to("cuda")` from ordinary memory waits for the device's queue to drain, stalling the training step
    behind it; from pinned memory the copy is queued like a kernel."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
