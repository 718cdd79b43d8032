"""A mixture of pretraining sources (VideoMAE V2's hybrid sets, V-JEPA 2's weighted mixture): which member of
which source each place of an epoch holds.

The sources' records are concatenated into one dataset (source ``s`` owns the indices ``offsets[s] ..
offsets[s] + sizes[s] - 1``). An epoch has ``epoch_len`` places (default: all sources' sizes summed), shared
between the sources in proportion to their weights (largest remainders; the same counts every epoch). Inside a
source the draws walk through a permutation of its members, without replacement until the source is used up,
then through a fresh permutation, and the walk continues across epochs: a source that gets 1.5x its size per
epoch sees every member once before any twice. Every place is a function of (seed, epoch) alone, so the order
is the same on every rank and a resumed run continues it exactly, as the plain sampler's does.
"""
from __future__ import annotations

import bisect
import math
from typing import Optional, Sequence

import torch

from motionmae_ds.data.loader import DistributedSampler
from motionmae_ds.data.sampling import derive_seed

_SOURCE_ORDER, _EPOCH_ORDER = 0x5EED_0001, 0x5EED_0002


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` places split in proportion to ``weights`` by largest remainders (ties to the earlier source)."""
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixture weights {list(weights)} must be finite, >= 0 and not all 0")
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


class MixturePlan:
    """See the module docstring. ``sizes``: members per source; ``weights``: their shares of an epoch."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int,
                 epoch_len: Optional[int] = None) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights")
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every source needs members; sizes {list(sizes)}")
        self.sizes, self.seed = list(sizes), seed
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.epoch_len = self.offsets[-1] if epoch_len is None else epoch_len
        self.per_epoch = apportion(self.epoch_len, weights)

    def _permutation(self, source: int, cycle: int) -> list[int]:
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, _SOURCE_ORDER, source, cycle))
        return torch.randperm(self.sizes[source], generator=g).tolist()

    def source_draws(self, source: int, epoch: int) -> list[int]:
        """Dataset indices of ``source``'s draws in ``epoch``, in draw order."""
        size, count = self.sizes[source], self.per_epoch[source]
        first = epoch * count  # draws made by the epochs before
        out, perms = [], {}
        for k in range(first, first + count):
            cycle = k // size
            if cycle not in perms:
                perms[cycle] = self._permutation(source, cycle)
            out.append(self.offsets[source] + perms[cycle][k % size])
        return out

    def epoch_order(self, epoch: int) -> list[int]:
        """The epoch's dataset indices: every source's draws, shuffled together."""
        places = [i for s in range(len(self.sizes)) for i in self.source_draws(s, epoch)]
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, _EPOCH_ORDER, epoch))
        return [places[j] for j in torch.randperm(len(places), generator=g).tolist()]

    def source_of(self, index: int) -> int:
        """The source that owns dataset index ``index``."""
        if not 0 <= index < self.offsets[-1]:
            raise IndexError(f"dataset index {index} outside 0..{self.offsets[-1] - 1}")
        return bisect.bisect_right(self.offsets, index) - 1


class MixtureSampler(DistributedSampler):
    """The distributed sampler (padding, rank striding, mid-epoch start) over a ``MixturePlan``'s epochs."""

    def __init__(self, plan: MixturePlan, num_replicas: int, rank: int, drop_last: bool = True) -> None:
        super().__init__(plan.epoch_len, num_replicas, rank, seed=plan.seed, shuffle=True, drop_last=drop_last)
        self.plan = plan

    def epoch_order(self) -> list[int]:
        return self.plan.epoch_order(self.epoch)
