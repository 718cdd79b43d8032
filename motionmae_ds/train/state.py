"""The run's state that is not in the engine: where the run is, the log meter between two log rows, and the
epoch's bad-video counts (and, for a mixture of datasets, each source's samples and bad videos).
``TrainState.state_dict()`` is what a checkpoint's client state gets from the loop, and ``load_state_dict`` puts a
resumed run back where it stopped, down to the half-filled meter of the next log row.

Every statistic the meter adds is already averaged over the ranks (the loop's per-micro-step all-reduce), so the
meter is the same on every rank. Bad-video and per-source counts are per rank until the epoch end or a checkpoint
sums them.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import torch

from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.errors import TooManyBadVideosError
from motionmae_ds.train.logging import RunLogger


class LogMeter:
    """Sums the rank-averaged statistics of the micro-steps since the last log row, and the samples they saw."""

    def __init__(self, num_stats: int) -> None:
        self.sums = torch.zeros(num_stats, dtype=torch.float64)
        self.micro_steps = 0
        self.samples = 0
        self.started = time.perf_counter()
        # time this rank's steps waited for the loader since the last row (or the resume), and the micro-steps
        # timed: timings are not part of the checkpoint
        self.wait_s = 0.0
        self.timed_micro = 0

    def add_wait(self, seconds: float) -> None:
        self.wait_s += seconds
        self.timed_micro += 1

    def data_wait(self, accum: int) -> tuple[float, float]:
        """(seconds waited per optimizer step of ``accum`` micro-steps, share of the wall time since the last row)."""
        elapsed = time.perf_counter() - self.started
        per_step = self.wait_s * accum / self.timed_micro if self.timed_micro else 0.0
        return per_step, (self.wait_s / elapsed if elapsed > 0 else 0.0)

    def add(self, stats_mean: torch.Tensor, samples: int) -> None:
        self.sums += stats_mean
        self.micro_steps += 1
        self.samples += samples

    def means(self) -> list[float]:
        return (self.sums / max(self.micro_steps, 1)).tolist()

    def rate(self) -> float:
        """Samples per second since the last row (or since the resume: time is not part of the checkpoint)."""
        elapsed = time.perf_counter() - self.started
        return self.samples / elapsed if elapsed > 0 else 0.0

    def reset(self) -> None:
        self.sums.zero_()
        self.micro_steps, self.samples, self.started = 0, 0, time.perf_counter()
        self.wait_s, self.timed_micro = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"meter_sums": self.sums.tolist(), "meter_micro_steps": self.micro_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state.get("meter_sums")
        if sums is not None and len(sums) == len(self.sums):
            self.sums = torch.tensor(sums, dtype=torch.float64)
            self.micro_steps = int(state.get("meter_micro_steps", 0))


def _add_counts(counts: list[int], sources: Iterable[int]) -> None:
    for s in sources:
        counts.extend([0] * (s + 1 - len(counts)))
        counts[s] += 1


def _sum_lists(lists: Iterable[list[int]]) -> list[int]:
    """Element-wise sum of lists of different lengths (a rank may not have seen the last sources yet)."""
    out: list[int] = []
    for counts in lists:
        out.extend([0] * (len(counts) - len(out)))
        for i, n in enumerate(counts):
            out[i] += n
    return out


class BadVideos:
    """Samples of this epoch that came from unreadable videos, counted on each rank, and their names until the
    epoch end (or a preemption) writes them to log.jsonl. With a mixture of sources (batches carrying ``source``,
    data/mixture.py) also the samples and the unreadable videos of each source."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.bad = 0
        self.seen = 0
        self.source_seen: list[int] = []
        self.source_bad: list[int] = []
        self.pending: list[tuple[int, int, str, str]] = []

    def note(self, batch: dict[str, Any], step: int, log: RunLogger) -> None:
        skipped = batch.get("skipped") or []
        self.seen += len(batch["video"])
        self.bad += len(skipped)
        if "source" in batch:  # a host tensor from the loader: no device sync
            _add_counts(self.source_seen, batch["source"].tolist())
            _add_counts(self.source_bad, batch.get("skipped_source") or [])
        for path, reason in skipped:
            # rank 0 prints its own at once; every rank's are named in log.jsonl at the epoch end
            log.info(f"skipped bad video {path}: {reason}")
            self.pending.append((self.rank, step, str(path), str(reason)))

    def totals(self) -> tuple[int, int]:
        """(bad, seen) summed over the ranks; every rank must call it."""
        counts = dist_utils.all_reduce_sum(torch.tensor([self.bad, self.seen], dtype=torch.float64))
        return int(counts[0]), int(counts[1])

    def source_totals(self) -> tuple[list[int], list[int]]:
        """(samples, unreadable videos) per source summed over the ranks (empty lists without a mixture); every
        rank must call it."""
        gathered = dist_utils.gather_objects([(self.source_seen, self.source_bad)])
        seen = _sum_lists(s for s, _ in gathered)
        bad = _sum_lists(b for _, b in gathered)
        return seen, bad + [0] * (len(seen) - len(bad))

    def flush_names(self, epoch: int, log: RunLogger) -> None:
        """Every rank's pending names into log.jsonl (rank 0 writes); every rank must call it."""
        named = dist_utils.gather_objects(self.pending)
        self.pending = []
        for rank, step, path, reason in named:
            if rank != 0:
                log.info(f"skipped bad video {path}: {reason} (rank {rank})")
            log.log({"epoch": epoch, "step": step, "bad_video": path, "reason": reason})

    def end_epoch(self, epoch: int, step: int, log: RunLogger, limit: float, list_name: str) -> None:
        """Name the epoch's bad videos, log its count, and stop the run above ``limit`` (data.max_bad_fraction)."""
        bad, seen = self.totals()
        source_seen, source_bad = self.source_totals()
        self.flush_names(epoch, log)
        if bad:
            log.info(f"epoch {epoch}: {bad} of {seen} samples came from unreadable videos")
            log.log({"epoch": epoch, "step": step, "bad_videos": bad, "samples": seen})
        if source_seen:
            log.info(f"epoch {epoch}: samples per source (unreadable videos): " + ", ".join(
                f"data.sources[{i}] {n} ({b})" for i, (n, b) in enumerate(zip(source_seen, source_bad))))
            log.log({"epoch": epoch, "step": step, "source_samples": source_seen, "source_bad_videos": source_bad,
                     **{f"samples_source{i}": n for i, n in enumerate(source_seen)},
                     **{f"bad_videos_source{i}": b for i, b in enumerate(source_bad)}})
        for i, (n, b) in enumerate(zip(source_seen, source_bad)):
            if n and b / n > limit:
                raise TooManyBadVideosError(
                    f"epoch {epoch}: data.sources[{i}]: {b}/{n} = {b / n:.1%} of its samples were unreadable videos, "
                    f"above data.max_bad_fraction={limit}; fix that source's list or raise the limit")
        if seen and bad / seen > limit:
            raise TooManyBadVideosError(
                f"epoch {epoch}: {bad}/{seen} = {bad / seen:.1%} of samples were unreadable videos, above "
                f"data.max_bad_fraction={limit}; fix the list ({list_name}) or raise the limit")

    def reset(self) -> None:
        self.bad, self.seen = 0, 0
        self.source_seen, self.source_bad = [], []


class TrainState:
    """Epochs and optimizer steps completed, micro-batches done in the current epoch, the log meter and the
    bad-video counts. ``micro_per_epoch`` (per rank) says when an epoch is complete."""

    def __init__(self, micro_per_epoch: int, rank: int = 0, stat_names: Iterable[str] = ("loss",)) -> None:
        self.micro_per_epoch = micro_per_epoch
        self.rank = rank
        self.epoch = 0
        self.step = 0
        self.micro_in_epoch = 0
        self.meter = LogMeter(len(tuple(stat_names)))
        self.bad_videos = BadVideos(rank)

    @property
    def epoch_done(self) -> bool:
        return self.micro_in_epoch >= self.micro_per_epoch

    def next_epoch(self) -> None:
        self.epoch, self.micro_in_epoch = self.epoch + 1, 0
        self.bad_videos.reset()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's share of the loop; every rank must call it (the bad-video counts are summed)."""
        bad, seen = self.bad_videos.totals()
        source_seen, source_bad = self.bad_videos.source_totals()
        return {"epoch": self.epoch, "step": self.step, "micro_in_epoch": self.micro_in_epoch,
                "epoch_bad": bad, "epoch_seen": seen, "epoch_source_seen": source_seen,
                "epoch_source_bad": source_bad, **self.meter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position; a checkpoint taken at an epoch's end resumes at the next epoch."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        # finetune checkpoints of earlier versions were written at epoch ends only
        self.micro_in_epoch = int(state.get("micro_in_epoch", self.micro_per_epoch))
        self.bad_videos.reset()
        if self.rank == 0:
            # the other ranks start from 0 so the epoch-end all-reduce counts each bad video once
            self.bad_videos.bad, self.bad_videos.seen = state.get("epoch_bad", 0), state.get("epoch_seen", 0)
            self.bad_videos.source_seen = list(state.get("epoch_source_seen", []))
            self.bad_videos.source_bad = list(state.get("epoch_source_bad", []))
        self.meter.reset()
        self.meter.load_state_dict(state)
        if self.epoch_done:
            self.next_epoch()
