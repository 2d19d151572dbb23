"""The optimizer: torch's fused kernels wherever torch has them, and a resume that keeps this machine's choice."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from resnets.training.checkpoint import rng_state
from resnets.training.config import TrainConfig
from resnets.training.optim import OPTIMIZERS, fused_optimizer, make_optimizer
from resnets.training.resume import restore
from resnets.training.epoch import Progress


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_fused_where_torch_has_the_kernel(name):
    opt = make_optimizer(torch.nn.Linear(4, 2), TrainConfig(opt=name))
    assert opt.defaults["fused"] is True  # torch >= 2.4 has fused SGD, Adam and AdamW on the CPU too
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_parameters_without_a_fused_kernel_get_the_default_implementation():
    # torch checks fused=True against the device only at the first step(): the choice must be made before
    params = (torch.nn.Parameter(torch.zeros(3, device="meta")) for _ in range(2))  # a generator: used twice
    opt = fused_optimizer(torch.optim.SGD, params, lr=0.1, momentum=0.9)
    assert not opt.defaults.get("fused") and len(opt.param_groups[0]["params"]) == 2
    opt.param_groups[0]["params"][0].grad = torch.zeros(3, device="meta")
    opt.step()  # with fused=True this raises "`fused=True` requires all the params to be ... supported devices"


def test_a_resumed_state_keeps_this_machines_optimizer_implementation():
    model = torch.nn.Linear(4, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # e.g. saved by an older resnets
    model(torch.randn(3, 4)).sum().backward()
    saved.step()
    state = dict(model=model.state_dict(), optimizer=saved.state_dict(), progress=dataclasses.asdict(Progress()),
                 rng=rng_state())
    optimizer = fused_optimizer(torch.optim.SGD, model.parameters(), lr=0.1, momentum=0.9)
    step = SimpleNamespace(model=model, optimizer=optimizer, ema=None, dist=SimpleNamespace(world_size=1, rank=0))
    restore(step, state, TrainConfig(batch_size=32, seed=0))
    assert all(g["fused"] == optimizer.defaults["fused"] for g in optimizer.param_groups)
    momentum = saved.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"], momentum)  # the state itself is loaded


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the step counters' device matters on a GPU"))])
def test_adam_resumed_from_an_unfused_state_steps_with_its_counters_on_the_parameters_device(device, monkeypatch):
    model = torch.nn.Linear(4, 2).to(device)
    saved = torch.optim.Adam(model.parameters(), lr=0.1)  # an older resnets: not fused
    model(torch.randn(3, 4, device=device)).sum().backward()
    saved.step()
    state = dict(model=model.state_dict(), optimizer=saved.state_dict(), progress=dataclasses.asdict(Progress()),
                 rng=rng_state())
    optimizer = fused_optimizer(torch.optim.Adam, model.parameters(), lr=0.1)
    loaded = []
    real_load = optimizer.load_state_dict
    monkeypatch.setattr(optimizer, "load_state_dict", lambda sd: loaded.append(sd) or real_load(sd))
    restore(SimpleNamespace(model=model, optimizer=optimizer, ema=None, dist=SimpleNamespace(world_size=1, rank=0)),
            state, TrainConfig(batch_size=32, seed=0))
    # fused before loading: torch places the step counters by the loaded groups' flags
    assert all(g["fused"] is True for g in loaded[0]["param_groups"])
    assert all(s["step"].device == model.weight.device for s in optimizer.state.values())
    optimizer.step()  # on CUDA the unfused placement failed here: "Expected all tensors to be on the same device"


@pytest.mark.parametrize("name", ["sgd", "nesterov"])
def test_a_skipped_first_step_leaves_fused_sgd_as_the_default_implementation_would(name):
    # torch's fused SGD allocates its momentum uninitialised on the first step and leaves it so when that step
    # is skipped (found_inf): a routine fp16 overflow at the initial loss scale then poisoned every later step
    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(64, 8), torch.nn.Linear(64, 8)
    plain_model.load_state_dict(fused_model.state_dict())
    cfg = TrainConfig(opt=name, weight_decay=0.0)
    fused = make_optimizer(fused_model, cfg)
    plain = torch.optim.SGD(plain_model.parameters(), lr=cfg.lr,
                            momentum=cfg.momentum, nesterov=name == "nesterov", foreach=False)
    assert fused.defaults["fused"] is True
    scalers = {id(fused): torch.amp.GradScaler("cpu"), id(plain): torch.amp.GradScaler("cpu")}
    x = torch.randn(16, 64)
    for step in range(4):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            scaler = scalers[id(optimizer)]
            loss = model(x).square().mean() * (float("inf") if step == 0 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        if step == 0:
            assert torch.equal(fused_model.weight, plain_model.weight)  # the overflowing step changed nothing
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("fused", [True, False])
def test_a_step_flagged_on_the_device_changes_nothing_and_an_unflagged_one_steps(name, fused, monkeypatch):
    from resnets.training.optim import step_unless

    torch.manual_seed(0)
    model, twin = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    twin.load_state_dict(model.state_dict())
    optimizer, reference = make_optimizer(model, TrainConfig(opt=name)), make_optimizer(twin, TrainConfig(opt=name))
    if not fused:  # as on a device without torch's fused kernel
        for opt in (optimizer, reference):
            opt.defaults["fused"] = False
            for group in opt.param_groups:
                group["fused"] = False
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(16, 8)
    for step in range(3):
        model(x).square().mean().backward()
        if fused:  # decided on the device: the flag is never read on the host
            monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("read on the host"))
        step_unless(optimizer, scaler, torch.tensor(float(step == 1)))  # the second step is skipped
        monkeypatch.undo()
        optimizer.zero_grad(set_to_none=True)
        if step != 1:
            twin(x).square().mean().backward()
            reference.step()
            reference.zero_grad(set_to_none=True)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert not hasattr(optimizer, "found_inf")
