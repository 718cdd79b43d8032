"""From a dataset to batches: the distributed sampler (its order a function of (seed, epoch) only, resumable
mid-epoch), the collate function and the training loader."""
from __future__ import annotations

import multiprocessing
import signal
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .finishing import pack_items


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

    def epoch_order(self) -> list[int]:
        """The whole epoch's order of dataset indices, before it is split between ranks (a function of the seed
        and the epoch only)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            return torch.randperm(self.dataset_len, generator=g).tolist()
        return list(range(self.dataset_len))

    def indices(self) -> list[int]:
        """This rank's full share for the current epoch (ignoring ``start``)."""
        order = self.epoch_order()
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


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``video``: the training items' frames and views packed into one ``finishing.PackedClips`` (or, for items
    without views, stacked (B, ...)); ``label``/``index`` (B,) (and ``view`` if present); ``skipped`` flat."""
    if "views" in batch[0]:
        video: Any = pack_items([b["video"] for b in batch], [b["views"] for b in batch],
                                [b.get("frame_format", "rgb") for b in batch])
    else:
        video = torch.stack([b["video"] for b in batch])
    out: dict[str, Any] = {
        "video": video,
        "label": torch.tensor([int(b["label"]) for b in batch], dtype=torch.long),
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.long),
        "skipped": [s for b in batch for s in b.get("skipped", ())],
    }
    if "view" in batch[0]:
        out["view"] = torch.tensor([int(b["view"]) for b in batch], dtype=torch.long)
    if "source" in batch[0]:  # a mixture's items (data/mixture.py): the per-source counts of train/state.py
        out["source"] = torch.tensor([int(b["source"]) for b in batch], dtype=torch.long)
        out["skipped_source"] = [int(b["source"]) for b in batch for _ in b.get("skipped", ())]
    return out


# the signals a scheduler stops a job with (runtime/preemption.py handles them in the rank)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker's start: SIGTERM and SIGUSR1 are its rank's to act on. Schedulers (scancel, a time
    limit, a pod eviction) and ``pkill -f`` signal every process of the job, workers included (they carry
    their rank's command line); a worker dying of it would fail its rank's next batch instead of letting the rank
    finish its step and checkpoint. The rank ends its workers itself when it leaves."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# What the forkserver imports once, so that each worker it forks starts with them loaded (tens of ms, not seconds).
_PRELOAD = ["torch", "motionmae_ds.data.datasets", "motionmae_ds.data.shards", "motionmae_ds.data.finishing"]


def worker_context() -> Any:
    """The start method of loader workers: forkserver. A worker forked from the rank would inherit the rank's
    decoder state (codec contexts with frame threads, swscale contexts, decord's reader threads; torchcodec's and
    the launcher's too): threads do not survive a fork, and a copy that waits for them when it is destroyed hangs
    the worker for ever (issue #33: PyAV, 2 of 4 runs). The forkserver is a fresh interpreter (started by
    fork + exec) that has decoded nothing; workers are forked from it, the dataset is pickled to them.
    ``tests/data/test_worker_start.py`` repeats the risky sequence."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def make_loader(dataset: Any, sampler: Any, batch_size: int, workers: int, timeout_s: float,
                device: torch.device) -> DataLoader:
    """The training loader. Pinned batches on an accelerator, so the step's ``.to(device, non_blocking=True)``
    copies asynchronously; persistent_workers=False: each epoch starts fresh workers (``worker_context``), which
    carry the new ``set_epoch``. Workers ignore the stop signals (``ignore_stop_signals``)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_clips,
                      drop_last=True, persistent_workers=False, pin_memory=device.type != "cpu",
                      timeout=timeout_s if workers > 0 else 0, worker_init_fn=ignore_stop_signals,
                      multiprocessing_context=worker_context() if workers > 0 else None)
