"""Data-parallel training on torch.distributed: one process per device, started by `torchrun`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with one process) everything here is a
no-op and the run is the plain single-process one. The rules the trainer keeps:

* every rank reads the same data order and takes its share (`EpochSampler`), so a resume may change the
  number of processes; each sample's augmentation depends on (seed, epoch, index), not on the rank;
* any decision that changes which collectives run next (skip a batch, skip a non-finite step, stop on
  bad data) is taken together, from values all ranks exchanged, or DDP would wait forever;
* only rank 0 writes files; the others learn the run folder from it.

Small host-side exchanges (flags, file names, lists of bad files) go over a gloo group, so that with NCCL
they do not force the GPU to drain its queue.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..device import resolve_device
from ..errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; `Distributed()` is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    host_group: Any = None  # gloo group for objects and flags (the default group when that is gloo)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any of them."""
        return bool(self.max(int(flag)))

    def max(self, value: int) -> int:
        """The largest of the ranks' `value`, on every rank."""
        if not self.enabled:
            return value
        t = torch.tensor([value])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return int(t.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (on the tensor's own device and backend)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.host_group)
        return out

    def on_main(self, fn: Callable[[], T], share: Callable[[T], Any] | None = None) -> Any:
        """Run `fn` on rank 0 and return its result there; every other rank gets `share(result)` (default: the
        result itself), sent over the wire, or the exception `fn` raised: a user error found by rank 0 alone
        (a damaged checkpoint, say) then ends every rank the same way instead of leaving the others waiting.
        `share` keeps what is large (a checkpoint, a decoded image store) on rank 0 and sends what the others
        need to find their own copy (its path)."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        result = None
        if self.is_main:
            try:
                result = fn()
                box[0] = (share(result) if share else result, None)
            except Exception as e:  # re-raised on every rank below, rank 0 included
                box[0] = (None, e)
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        shared, error = box[0]
        if error is not None:
            raise error
        return result if self.is_main else shared

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's copy of `module`."""
        if self.enabled:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) over the ranks.

        DDP hands rank 0's buffers to every rank at the start of each forward, so after the last training
        step each rank holds statistics of its own last batch. Evaluated as they are, every shard would be
        judged by a slightly different model than the one saved; averaged (as timm's `distribute_bn`
        does), all ranks evaluate and save the same one."""
        self._average(b for b in module.buffers() if b.is_floating_point())

    def average_gradients(self, module: nn.Module) -> None:
        """Average the gradients over the ranks, as DDP's backward would have: for an accumulation cycle
        whose last batch (the one whose backward all-reduces) was skipped because no rank could read it."""
        self._average(p.grad for p in module.parameters() if p.grad is not None)

    def _average(self, tensors: Iterable[torch.Tensor]) -> None:
        """In place, the mean over the ranks of each tensor."""
        if self.enabled:
            for tensor in tensors:
                dist.all_reduce(tensor)
                tensor.div_(self.world_size)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this job (`--max-restarts`); 0 for a first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def elastic_run_id() -> str | None:
    """torchrun's id of the job, the same in every restart (a fresh uuid per `--standalone` launch)."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def init_distributed(device: str, timeout_s: float) -> tuple[Distributed, torch.device]:
    """Join the job torchrun started (NCCL on GPUs, gloo on CPUs) and pick this process's device.

    `timeout_s` bounds how long a rank waits in a collective for a peer that died or hangs: with a crash
    on another node, that is how long it takes the job to end.
    """
    wanted = resolve_device(device)
    if launched_world_size() <= 1:
        return Distributed(), wanted
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        if wanted.index is not None:
            raise ConfigError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                              f"pass --device cuda (or pick GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                              f"start at most that many processes per node")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if wanted.type == "cuda" else "gloo"
    # torchrun shares its rendezvous store with the workers, and keys of a failed attempt outlive it: a
    # restarted rank could read a dead peer's address and fail to connect (pytorch/pytorch#135712). Each
    # attempt gets its own key space.
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"resnets/attempt-{elastic_restart_count()}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout,
                            device_id=wanted if backend == "nccl" else None)
    host_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, host_group), wanted


def wrap_model(model: nn.Module, ctx: Distributed, device: torch.device, bucket_mb: float,
               static_graph: bool, find_unused: bool = False) -> nn.Module:
    """The DDP wrapper that averages gradients during backward (the model itself when alone). `find_unused`:
    some steps leave parameters without a gradient (--head-epochs freezes the backbone for a while); DDP then
    looks for them in each step's graph, and leaves their .grad None, or it would wait for them forever."""
    if not ctx.enabled:
        return model
    # Gradients as views into the communication buckets: no second copy of every gradient, and no
    # copy-in before each all-reduce.
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=bucket_mb,
               gradient_as_bucket_view=True, static_graph=static_graph, find_unused_parameters=find_unused)


def convert_sync_bn(model: nn.Module, ctx: Distributed, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch. torch's SyncBatchNorm has GPU kernels only."""
    if ctx.enabled and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation "
                          "(drop --sync-bn for gloo/CPU runs)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
