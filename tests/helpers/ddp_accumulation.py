"""Two gloo processes (run under torchrun) train a linear model with 2-batch accumulation cycles in which
rank 0 could read no file of one cycle's last batch; prints the step count and whether the ranks' weights
still agree. For tests/test_distributed.py."""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch import nn

from resnets.training.config import TrainConfig
from resnets.training.distributed import Distributed
from resnets.training.optim import make_optimizer
from resnets.training.steps import Progress, Run, train_one_epoch


class FloatBatches:
    channels_last = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = Distributed(rank=rank, world_size=world, host_group=dist.group.WORLD)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = nn.Linear(4, 3)
    ddp = nn.parallel.DistributedDataParallel(model)
    cfg = TrainConfig(opt="sgd", accum_steps=2, progress=False, epochs=1, weight_decay=0.0)
    g = torch.Generator().manual_seed(rank + 1)  # each rank its own data
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    if rank == 0:  # the end of the second cycle: nothing readable on rank 0, so every rank skips it
        batches[3] = (torch.empty(0, 4), torch.empty(0, dtype=torch.long))
    run = Run(model=model, step_model=ddp, ddp=ddp, optimizer=make_optimizer(model, cfg), base_lr=0.1,
              scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None, criterion=nn.CrossEntropyLoss(),
              mixer=None, device=torch.device("cpu"), amp="off", normalize=FloatBatches(), batches_per_epoch=6,
              global_batch=8 * world, dist=ctx)
    progress = Progress()
    train_one_epoch(run, batches, cfg, progress, lambda: None)
    weights = [torch.empty_like(model.weight) for _ in range(world)]
    dist.all_gather(weights, model.weight.detach())
    if rank == 0:
        print(json.dumps(dict(steps=progress.global_step, agree=all(torch.equal(w, weights[0]) for w in weights))))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
