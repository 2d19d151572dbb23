"""Exponential moving average of the weights, updated without waiting for the device."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class ModelEma(AveragedModel):
    """torch's AveragedModel over parameters and buffers, with its state-dict layout (`module.*`,
    `n_averaged`) and its average, updated without a host sync. AveragedModel's own update compares its
    counter on the host and copies it to the model's device with a blocking copy on every call: a wait for
    the GPU's whole queue per training step. Here the counter lives on the model's device and every
    decision is a tensor there."""

    def __init__(self, model: nn.Module, decay: float):
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
        super().__init__(model, device=device, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """Move the average towards `model`'s weights: take them as they are the first time (as AveragedModel
        does), by 1 - decay after. Where the device flag `skip` is set (the optimizer step just before was
        skipped), leave the average as it is."""
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if len(ours) != len(theirs):
            raise ValueError("the averaged model and `model` differ in their parameters or buffers")
        keep = 1 if skip is None else 1 - skip.to(self.n_averaged.dtype)
        floats = [(a, b) for a, b in zip(ours, theirs) if a.is_floating_point()]
        if floats:
            a, b = [a for a, _ in floats], [b for _, b in floats]
            weight = torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay).to(a[0].dtype) * keep
            # a += weight * (b - a), with the weight a device tensor: foreach ops take one 0-dim tensor as a
            # scalar without reading it (a list of weights would fall back to one kernel per tensor)
            step = torch._foreach_sub(b, a)
            torch._foreach_mul_(step, weight)
            torch._foreach_add_(a, step)
        for a, b in zip(ours, theirs):  # counters (BN's num_batches_tracked) follow the model
            if not a.is_floating_point():
                a.copy_(b)
        self.n_averaged += keep
