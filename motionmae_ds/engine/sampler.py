"""Distributed sampler whose order is a function of (seed, epoch) only, resumable mid-epoch."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class DistributedSampler(Sampler[int]):
    """Shuffle with a generator seeded by (seed, epoch), pad to a multiple of the world size, stride.

    ``set_start(n)`` skips the first ``n`` indices of this rank's share for the next iteration, which is how
    a run resumed from a mid-epoch checkpoint continues exactly where it stopped.
    """

    def __init__(self, dataset_len: int, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        if dataset_len <= 0:
            raise ValueError("DistributedSampler: the dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} outside world size {num_replicas}")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.per_rank = dataset_len // num_replicas
            if self.per_rank == 0:
                raise ValueError(f"DistributedSampler: {dataset_len} samples for {num_replicas} ranks")
        else:
            self.per_rank = -(-dataset_len // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"DistributedSampler: start {start} outside 0..{self.per_rank}")
        self.start = start

    def indices(self) -> list[int]:
        """This rank's full share for the current epoch (ignoring ``start``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.per_rank * self.num_replicas
        if total > len(order):
            # pad by wrapping so every rank does the same number of steps
            reps = -(-total // len(order))
            order = (order * reps)[:total]
        else:
            order = order[:total]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
