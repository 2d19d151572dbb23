"""Data order and augmentation randomness as pure functions of (seed, epoch, index).

A run killed mid-epoch and resumed must see the same samples in the same order with the same random
crops as the run that was never interrupted, whatever the number of loader workers. Worker RNG state
cannot be saved, so nothing random may depend on it: the sampler draws each epoch's order from
(seed, epoch) and can start at any position, and every item draws its augmentation from its own
generator seeded by (seed, epoch, index).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): nearby inputs give unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index): a seeded permutation per epoch, or a seeded weighted draw (balanced sampling).

    With several processes every rank draws the same order and takes every `world_size`-th position from
    `start` on, cut to the same length on every rank (DDP steps in lockstep). Batch k of every rank then
    covers positions [k * batch * world, (k + 1) * batch * world) of the order: after k batches the first
    k * batch * world positions are consumed, whatever the number of processes, and a run resumed with
    another number continues at that position.
    """

    def __init__(self, num_samples: int, seed: int, weights: Sequence[float] | None = None, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of its positions all ranks together already consumed (resuming)."""
        self.epoch, self.start = epoch, min(start, self.num_samples)

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order(self.epoch)[self.start + self.rank::self.world_size][:len(self)]
        for index in mine.tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return (self.num_samples - self.start) // self.world_size

    def batch_generator(self, batch: int, batch_size: int) -> torch.Generator:
        """A CPU generator for augmenting this rank's `batch`-th batch as a whole (the device pipelines),
        seeded by the batch's position in the epoch's order: a resumed run draws the same numbers."""
        position = self.start + batch * batch_size * self.world_size
        return torch.Generator().manual_seed(_mix(self.seed, self.epoch, position, self.rank))


class SeededItems(Dataset):
    """Wraps a dataset so that item (epoch, index) is transformed under its own fixed random seed."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        # fork_rng restores the caller's generator afterwards: with 0 workers this runs in the training
        # process, whose RNG also drives dropout, drop-path and mixup.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix(self.seed, epoch, index))  # CPU only: CUDA's stays put
            return self.dataset[index]
