"""Exponential moving average of the weights, updated without waiting for the device."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class ModelEma(AveragedModel):
    """torch's AveragedModel over parameters and buffers, with its state-dict layout (`module.*`,
    `n_averaged`) and its average, updated without reading a device tensor on the host. AveragedModel's own
    update tests its counter (a device tensor) twice per call: two host syncs per training step, each one
    stalling the queue of GPU work behind it. Here every decision is a tensor on the device."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
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
            # lerp by 1 gives `b` exactly: torch computes weights >= 0.5 as b - (b - a) * (1 - weight)
            weight = torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay).to(floats[0][0].dtype) * keep
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], [weight] * len(floats))
        for a, b in zip(ours, theirs):  # counters (BN's num_batches_tracked) follow the model
            if not a.is_floating_point():
                a.copy_(b)
        self.n_averaged += keep
