"""Evaluating a model over a loader: loss, top-1/top-5 and every prediction. Training validates with it each
epoch; `resnets eval` reports with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast


@dataclass
class EvalResult:
    loss_sum: float
    correct1: int
    correct5: int
    num_samples: int
    predictions: torch.Tensor = field(repr=False)  # (N,) predicted class index
    targets: torch.Tensor = field(repr=False)  # (N,)
    probabilities: torch.Tensor | None = field(default=None, repr=False)  # (N, C) when asked for
    losses: torch.Tensor | None = field(default=None, repr=False)  # (N,) cross-entropy, with keep_losses
    confidences: torch.Tensor | None = field(default=None, repr=False)  # (N,) softmax of the predicted class, too

    @property
    def loss(self) -> float:
        return self.loss_sum / self.num_samples

    @property
    def top1(self) -> float:  # percent, as timm reports it
        return 100.0 * self.correct1 / self.num_samples

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / self.num_samples


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> torch.Tensor:
    """How many samples have their target among the k highest logits, for each k (k capped at C), as a
    tensor on the logits' device: summing it needs no host sync."""
    ks = list(ks)
    maxk = min(max(ks), logits.shape[1])
    hits = logits.topk(maxk, dim=1).indices.eq(targets[:, None])  # (B, maxk)
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "off",
             keep_probabilities: bool = False, progress: Callable[[Iterable], Iterable] | None = None,
             channels_last: bool = False, allow_empty: bool = False,
             normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
             keep_losses: bool = False) -> EvalResult:
    """Loss, top-1/top-5 and per-sample predictions of `model` over `loader`.

    Sums stay on the device and predictions are moved once at the end: no host sync per batch.
    `allow_empty`: a rank's shard of a tiny validation set may hold nothing; its part is then empty.
    `normalize`: applied to each batch on the device (`DeviceNormalize`, for loaders that yield uint8).
    `keep_losses`: also each sample's loss and predicted-class probability, (N,) each: what predictions.csv and
    the top losses need, at 8 bytes a sample where `keep_probabilities` costs 4 bytes a class.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    preds, targets, probs, losses, confidences = [], [], [], [], []
    for images, labels in (progress(loader) if progress else loader):
        images = images.to(device, non_blocking=True)
        if normalize is not None:
            images = normalize(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        sums[0] += loss.sum()
        sums[1:] += topk_hits(logits, labels)
        preds.append(logits.argmax(1))
        targets.append(labels)
        if keep_probabilities:
            probs.append(logits.softmax(1))
        if keep_losses:
            losses.append(loss)
            confidences.append(logits.softmax(1).amax(1))
    if not targets:
        if not allow_empty:
            raise ValueError("evaluation set is empty")
        nothing = torch.empty(0, dtype=torch.long)
        no_values = torch.empty(0) if keep_losses else None
        return EvalResult(0.0, 0, 0, 0, nothing, nothing, torch.empty(0, 0) if keep_probabilities else None,
                          no_values, no_values)
    loss_sum, c1, c5 = sums.tolist()
    predictions, target = torch.cat(preds).cpu(), torch.cat(targets).cpu()
    return EvalResult(loss_sum, int(c1), int(c5), len(target), predictions, target,
                      torch.cat(probs).cpu() if keep_probabilities else None,
                      torch.cat(losses).cpu() if keep_losses else None,
                      torch.cat(confidences).cpu() if keep_losses else None)


def merge_results(parts: list[EvalResult]) -> EvalResult:
    """One result from the disjoint shards that the ranks evaluated."""
    def joined(name: str) -> torch.Tensor | None:  # kept by every part, or by none
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    return EvalResult(sum(p.loss_sum for p in parts), sum(p.correct1 for p in parts),
                      sum(p.correct5 for p in parts), sum(p.num_samples for p in parts),
                      joined("predictions"), joined("targets"), joined("probabilities"), joined("losses"),
                      joined("confidences"))
