"""Two gloo processes (run under torchrun) train a linear model with 2-batch accumulation cycles in which
rank 0 could read no file of one cycle's last batch. Prints the step count, whether the ranks' weights still
agree, and whether that cycle stepped with the ranks' average gradient (each rank's own first-batch gradient,
recomputed here, averaged). For tests/test_distributed.py."""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch import nn

from resnets.data.transforms import DeviceNormalize
from resnets.models.pretrained_cfg import PretrainedCfg
from resnets.training import step as step_module
from resnets.training.config import TrainConfig
from resnets.training.distributed import Distributed, wrap_model
from resnets.training.epoch import Progress, train_one_epoch
from resnets.training.optim import make_optimizer
from resnets.training.step import TrainStep


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = Distributed(rank=rank, world_size=world, host_group=dist.group.WORLD)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = nn.Linear(4, 3)
    ddp = wrap_model(model, ctx, torch.device("cpu"), bucket_mb=25, static_graph=False)
    cfg = TrainConfig(opt="sgd", accum_steps=2, progress=False, epochs=1, weight_decay=0.0)
    g = torch.Generator().manual_seed(rank + 1)  # each rank its own data
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    if rank == 0:  # the end of the second cycle: nothing readable on rank 0, so every rank skips it
        batches[3] = (torch.empty(0, 4), torch.empty(0, dtype=torch.long))
    floats_as_they_are = DeviceNormalize(PretrainedCfg())  # it normalises uint8 batches only
    step = TrainStep(model=model, optimizer=make_optimizer(model, cfg), criterion=nn.CrossEntropyLoss(),
                     normalize=floats_as_they_are, device=torch.device("cpu"), amp="off", base_lr=0.1,
                     scaler=torch.amp.GradScaler("cpu", enabled=False), dist=ctx, accum_steps=cfg.accum_steps,
                     step_model=ddp, ddp=ddp)
    seen = []  # (weight, bias, weight's gradient) at each optimizer step, before it
    real_step = step_module.step_unless

    def recording_step(optimizer, scaler, skip):
        seen.append((model.weight.detach().clone(), model.bias.detach().clone(), model.weight.grad.detach().clone()))
        real_step(optimizer, scaler, skip)

    step_module.step_unless = recording_step
    progress = Progress()
    train_one_epoch(step, batches, cfg, progress, lambda: None, batches_per_epoch=6)
    weights = [torch.empty_like(model.weight) for _ in range(world)]
    dist.all_gather(weights, model.weight.detach())
    # the second cycle ran batch 2 only: its step must use the ranks' mean of (that batch's gradient) / 2
    weight_then, bias_then, stepped_with = seen[1]
    probe = nn.Linear(4, 3)
    with torch.no_grad():
        probe.weight.copy_(weight_then)
        probe.bias.copy_(bias_then)
    own = torch.autograd.grad(nn.functional.cross_entropy(probe(batches[2][0]), batches[2][1]) / 2, probe.weight)[0]
    dist.all_reduce(own)
    if rank == 0:
        print(json.dumps(dict(steps=progress.global_step, agree=all(torch.equal(w, weights[0]) for w in weights),
                              averaged=bool(torch.allclose(stepped_with, own / world, atol=1e-6)))))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
