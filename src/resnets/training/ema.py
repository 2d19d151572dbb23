"""Exponential moving average of the weights, updated without waiting for the device."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEma(AveragedModel):
    """torch's AveragedModel over parameters and buffers, with its state-dict layout (`module.*`,
    `n_averaged`), whose update never reads a device tensor on the host. AveragedModel's own update tests
    its counter (a device tensor) twice per call: two host syncs per training step, each one stalling the
    queue of GPU work behind it. Here a host-side flag says whether the average has started."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self._lerp = get_ema_multi_avg_fn(decay)
        self.started = False  # n_averaged > 0, kept on the host

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if len(ours) != len(theirs):
            raise ValueError("the averaged model and `model` differ in their parameters or buffers")
        if not self.started:  # the first update takes the weights as they are, as AveragedModel does
            for a, b in zip(ours, theirs):
                a.copy_(b)
            self.started = True
        else:
            floats = [(a, b) for a, b in zip(ours, theirs) if a.is_floating_point()]
            if floats:
                self._lerp([a for a, _ in floats], [b for _, b in floats], None)
            for a, b in zip(ours, theirs):  # counters (BN's num_batches_tracked) follow the model
                if not a.is_floating_point():
                    a.copy_(b)
        self.n_averaged += 1

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.started = bool(self.n_averaged > 0)  # once per resume
        return result
