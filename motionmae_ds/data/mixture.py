"""A mixture of pretraining sources (VideoMAE V2's hybrid sets, V-JEPA 2's weighted mixture): which member of
which source each place of an epoch holds.

The sources' records are concatenated into one dataset (source ``s`` owns the indices ``offsets[s] ..
offsets[s] + sizes[s] - 1``). An epoch has ``epoch_len`` places (default: all sources' sizes summed), shared
between the sources in proportion to their weights (largest remainders; the same counts every epoch). Inside a
source the draws walk through a permutation of its members, without replacement until the source is used up,
then through a fresh permutation, and the walk continues across epochs: a source that gets 1.5x its size per
epoch sees every member once before any twice. Every place is a function of (seed, epoch) alone, so the order
is the same on every rank and a resumed run continues it exactly, as the plain sampler's does.

``MixtureDataset`` puts the plan behind one dataset index (place ``p`` of the epoch), so the training loop keeps
its one sampler (data/loader.py) for a mixture as for a single list.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from motionmae_ds.data.datasets import DataLoadError
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


class MixtureDataset(Dataset):
    """The sources' datasets behind one index of ``plan.epoch_len`` places: place ``p`` of the current epoch is
    member ``plan.epoch_order(epoch)[p]``. The training loop's own sampler (data/loader.py) then splits the places
    between the ranks and resumes mid-epoch as for one dataset, and ``set_epoch`` (which the loop calls before it
    forks the epoch's workers) selects the epoch. Items carry ``source``, their source's index, for the
    per-source counts; an item its source cannot deliver (all retries unreadable) names the source."""

    def __init__(self, sources: Sequence[Dataset], names: Sequence[str], weights: Sequence[float], seed: int,
                 epoch_len: Optional[int] = None) -> None:
        if len(names) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(names)} names")
        self.sources, self.names, self.weights = list(sources), list(names), list(weights)
        self.plan = MixturePlan([len(d) for d in self.sources], weights, seed, epoch_len)  # type: ignore[arg-type]
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.plan.epoch_len

    def describe(self) -> list[str]:
        """One line per source: its videos, weight and samples per epoch."""
        return [f"data.sources[{i}] {name}: {size} videos, weight {weight:g}: {count} samples per epoch"
                for i, (name, size, weight, count) in enumerate(zip(self.names, self.plan.sizes, self.weights,
                                                                    self.plan.per_epoch))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for dataset in self.sources:
            dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.places = self.plan.epoch_order(self.epoch)

    def __getitem__(self, place: int) -> dict[str, Any]:
        index = self.places[place]
        source = self.plan.source_of(index)
        try:
            item = self.sources[source][index - self.plan.offsets[source]]
        except DataLoadError as exc:
            raise DataLoadError(f"data.sources[{source}] ({self.names[source]}): {exc}") from None
        item["source"] = source
        return item
