"""The optimizer: torch's fused kernels wherever torch has them, and a resume that keeps this machine's choice."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from resnets.training.checkpoint import rng_state
from resnets.training.config import OPTIMIZERS, TrainConfig
from resnets.training.optim import fused_optimizer, make_optimizer
from resnets.training.resume import restore
from resnets.training.steps import Progress


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_fused_where_torch_has_the_kernel(name):
    opt = make_optimizer(torch.nn.Linear(4, 2), TrainConfig(opt=name))
    assert opt.defaults["fused"] is True  # torch >= 2.4 has fused SGD, Adam and AdamW on the CPU too
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_without_a_fused_kernel_the_default_implementation_gets_every_parameter():
    class NoFusedKernel(torch.optim.SGD):  # what torch raises for a device it has no fused kernel for
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be ... of supported devices")
            super().__init__(params, **kwargs)

    model = torch.nn.Linear(4, 2)
    opt = fused_optimizer(NoFusedKernel, model.parameters(), lr=0.1)  # a generator: must not run dry on the retry
    assert not opt.defaults.get("fused")
    assert len(opt.param_groups[0]["params"]) == 2


def test_a_resumed_state_keeps_this_machines_optimizer_implementation():
    model = torch.nn.Linear(4, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # e.g. saved by an older resnets
    model(torch.randn(3, 4)).sum().backward()
    saved.step()
    state = dict(model=model.state_dict(), optimizer=saved.state_dict(), progress=dataclasses.asdict(Progress()),
                 rng=rng_state())
    optimizer = fused_optimizer(torch.optim.SGD, model.parameters(), lr=0.1, momentum=0.9)
    run = SimpleNamespace(model=model, optimizer=optimizer, ema=None, global_batch=32,
                          dist=SimpleNamespace(world_size=1, rank=0))
    restore(run, state, seed=0)
    assert all(g["fused"] == optimizer.defaults["fused"] for g in optimizer.param_groups)
    momentum = saved.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"], momentum)  # the state itself is loaded
