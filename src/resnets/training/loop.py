"""The training loop as two plain functions, in the manner of torchvision's reference scripts."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent, as timm reports it
    top5: float
    num_samples: int
    predictions: torch.Tensor = field(repr=False)  # (N,) predicted class index
    targets: torch.Tensor = field(repr=False)  # (N,)
    probabilities: torch.Tensor | None = field(default=None, repr=False)  # (N, C) when asked for


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (and bf16 on CPU when asked); a no-op for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[int]:
    """How many samples have their target among the k highest logits, for each k (k capped at C)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hits = top.eq(targets[:, None])
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "off",
             keep_probabilities: bool = False, progress: Callable[[Iterable], Iterable] | None = None,
             channels_last: bool = False) -> EvalResult:
    """Loss, top-1/top-5 (percent) and per-sample predictions of `model` over `loader`."""
    model.eval()
    total_loss, correct1, correct5, n = 0.0, 0, 0, 0
    preds, targets, probs = [], [], []
    for images, labels in (progress(loader) if progress else loader):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, n = correct1 + c1, correct5 + c5, n + labels.shape[0]
        preds.append(logits.argmax(1).cpu())
        targets.append(labels.cpu())
        if keep_probabilities:
            probs.append(logits.softmax(1).cpu())
    if n == 0:
        raise ValueError("evaluation set is empty")
    return EvalResult(total_loss / n, 100.0 * correct1 / n, 100.0 * correct5 / n, n,
                      torch.cat(preds), torch.cat(targets), torch.cat(probs) if keep_probabilities else None)
