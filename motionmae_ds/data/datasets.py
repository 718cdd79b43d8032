"""Clips from list-file records: sampling + decoding + transforms, deterministic and robust to bad files.

Determinism: every random draw of item ``i`` comes from a generator seeded by (seed, epoch, i, attempt),
never from worker identity or timing, so a resumed run (or another worker count) sees identical data.

Bad videos: a record whose frames cannot be delivered is replaced by record ``(i + k * 1000003) % len``
for k = 1..max_retries (deterministic); every failure is returned as ``(path, reason)`` in ``skipped`` so
the main process can log and count it. When all retries fail, ``DataLoadError`` names the last reasons.

Item layout (workers only decode and cut; the step's device finishes: ``finishing.finish_clips``):
- pretrain: ``video`` the decoded frames, uint8 (U, H, W, 3), and ``views`` R ``finishing.View``s (frame
  positions, crop box, flip) with ``num_repeats`` R: R clips with their own random temporal starts (distinct
  where the video has room), crops and flips; the union of their frames is decoded once, in one pass through
  the file (repeated temporal sampling, mae_st's ``repeat_aug``), and travels once.
- train: the same, but R > 1 re-augments ONE decoded clip R times (VideoMAE's repeated sampling); with RandAug
  the worker crops, resizes, flips and augments (uint8 (R * T, S, S, 3), views with full boxes).
- val: the centre clip's centre crop, uint8 (3, T, S, S).
- test: ALL views of one video in one item, ``video`` uint8 (K * C, 3, T, S, S) for K clips x C crops, view
  ``k * C + c``; the union of the K clips' frames is decoded once and resized once.
``mean`` / ``std`` are not applied here; they are kept for the evaluation loop and as RandAug's fill colour.
``label`` and ``index`` are those of the record actually returned (the replacement, after a failure).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .decode import VideoDecodeError, VideoReader, count_present_frames, read_frame_folder
from .finishing import frame_size
from .sampling import (
    SAMPLINGS,
    eval_indices,
    make_generator,
    repeated_train_indices,
    spatial_crop_offsets,
    train_indices,
)
from .transforms import EvalTransform, TrainTransform, resize_short_side

MODES = ("pretrain", "train", "val", "test")
_RETRY_STRIDE = 1_000_003  # prime: successive replacements land far apart and cycle through the whole list
# data/decode wraps decoder failures in VideoDecodeError; OSError covers files vanishing or unreadable.
# Anything else is a bug or a bad setting and must not be counted as a bad video.
_DECODE_ERRORS = (VideoDecodeError, OSError)


class DataLoadError(RuntimeError):
    """Too many consecutive records failed to decode."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, VideoDecodeError) and exc.reason:
        return exc.reason
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


class VideoClipDataset(Dataset):
    """See the module docstring. ``records`` are ``lists.VideoRecord``s (path, label, start, num_frames,
    is_frame_dir, frame_template); ``frame_template`` / ``frame_start`` override the records' values."""

    def __init__(
        self,
        records: Sequence[Any],
        mode: str = "pretrain",
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        short_side_size: int | None = None,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        rand_aug: str | None = None,
        random_erase: float = 0.0,
        num_repeats: int = 1,
        test_clips: int = 2,
        test_crops: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        backend: str = "auto",
        max_retries: int = 10,
        frame_template: str | None = None,
        frame_start: int | None = None,
        sampling: str = "dense",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("num_frames", num_frames), ("sampling_rate", sampling_rate),
                            ("input_size", input_size), ("num_repeats", num_repeats),
                            ("test_clips", test_clips), ("test_crops", test_crops)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not 0.0 <= random_erase <= 1.0:
            raise ValueError(f"random_erase (a probability) must be in [0, 1], got {random_erase}")
        if mean is not None and std is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={mean} std={std}")
        if len(records) == 0:
            raise ValueError("records is empty: no videos to load")
        if sampling not in SAMPLINGS or (sampling != "dense" and mode == "pretrain"):
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)} (pretraining: dense), got {sampling!r}")
        self.sampling = sampling
        self.records = list(records)
        self.mode, self.num_frames, self.sampling_rate = mode, int(num_frames), int(sampling_rate)
        self.input_size = int(input_size)
        self.short_side_size = int(short_side_size) if short_side_size else self.input_size
        self.num_repeats, self.test_clips, self.test_crops = int(num_repeats), int(test_clips), int(test_crops)
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.seed, self.backend = int(seed), backend
        self.max_retries, self.frame_template, self.frame_start = int(max_retries), frame_template, frame_start
        self.epoch = 0
        if mode in ("pretrain", "train"):
            fill = [round(255 * m) for m in mean] if mean is not None else None
            self.transform: Any = TrainTransform(self.input_size, scale, ratio, flip, rand_aug, random_erase, fill)
        else:
            # raises on short_side_size < input_size
            self.transform = EvalTransform(self.input_size, self.short_side_size)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random draws (call before iterating, in the main process)."""
        self.epoch = int(epoch)

    def _frame_source(self, record: Any) -> tuple[str, int]:
        template = self.frame_template or getattr(record, "frame_template", "img_{:05d}.jpg")
        start = self.frame_start if self.frame_start is not None else int(record.start)
        return template, start

    def _read(
        self, record: Any, reader: VideoReader | None, clips: list[list[int]], yuv: bool = False
    ) -> tuple[torch.Tensor, list[list[int]], str]:
        """Decode the union of the clips' frames once: (frames, positions per clip, their format). Frames are uint8
        (U, H, W, 3), "rgb"; with ``yuv`` and a backend that hands over 4:2:0 frames, (U, H * 3 / 2, W) I420 and the
        colour matrix (converted on the device: ``finishing.finish_clips``)."""
        union = sorted({i for clip in clips for i in clip})
        where = {frame: pos for pos, frame in enumerate(union)}
        positions = [[where[i] for i in clip] for clip in clips]
        if reader is None:
            template, start = self._frame_source(record)
            return read_frame_folder(record.path, union, template, start), positions, "rgb"
        wanted = [int(record.start) + i for i in union]
        if yuv:
            frames, fmt = reader.get_frames(wanted)
            return frames, positions, fmt
        return reader.get(wanted), positions, "rgb"

    def _num_frames(self, record: Any, reader: VideoReader | None) -> int:
        if record.num_frames is not None and int(record.num_frames) > 0:
            return int(record.num_frames)
        if reader is None:
            n = count_present_frames(record.path, *self._frame_source(record))
        else:
            n = reader.num_frames - int(record.start)
        if n < 1:
            raise VideoDecodeError(record.path, f"no frames at or after start index {record.start}")
        return n

    def _load(self, record: Any, generator: torch.Generator) -> dict[str, Any]:
        if record.is_frame_dir:
            return self._load_from(record, None, generator)
        with VideoReader(record.path, self.backend) as reader:  # one open per item, in this worker
            return self._load_from(record, reader, generator)

    def _load_from(self, record: Any, reader: VideoReader | None, generator: torch.Generator) -> dict[str, Any]:
        """``{"video": ...}`` and, in the training modes, ``"views"`` (module docstring)."""
        n = self._num_frames(record, reader)
        if self.mode == "pretrain":  # repeated temporal sampling: R clips, the union decoded in one pass
            clips = repeated_train_indices(self.sampling, n, self.num_frames, self.sampling_rate, self.num_repeats,
                                           generator)
            frames, positions, fmt = self._read(record, reader, clips, yuv=True)
            height, width = frame_size(frames, fmt)
            return {"video": frames, "frame_format": fmt,
                    "views": [self.transform.view(height, width, pos, generator) for pos in positions]}
        if self.mode == "train":
            clip = train_indices(self.sampling, n, self.num_frames, self.sampling_rate, generator)
            if self.transform.rand_aug is None:  # R views of the one clip's frames, finished on the device
                frames, positions, fmt = self._read(record, reader, [clip], yuv=True)
                height, width = frame_size(frames, fmt)
                return {"video": frames, "frame_format": fmt,
                        "views": [self.transform.view(height, width, positions[0], generator)
                                  for _ in range(self.num_repeats)]}
            frames, positions, _ = self._read(record, reader, [clip])
            frames = frames[positions[0]]  # in clip order, repeated frames (short videos) included
            done, views, t = [], [], len(positions[0])
            for k in range(self.num_repeats):
                done.append(self.transform(frames, generator)[0])
                views.append(self.transform.erase_view(range(k * t, (k + 1) * t), generator))
            return {"video": torch.cat(done), "frame_format": "rgb", "views": views}
        if self.mode == "val":
            clip = eval_indices(self.sampling, n, self.num_frames, self.sampling_rate, 1)[0]
            frames, positions, _ = self._read(record, reader, [clip])
            return {"video": self.transform(frames[positions[0]])}
        clips = eval_indices(self.sampling, n, self.num_frames, self.sampling_rate, self.test_clips)
        frames, positions, _ = self._read(record, reader, clips)
        resized = resize_short_side(frames, self.short_side_size)
        s = self.input_size
        offsets = spatial_crop_offsets(resized.shape[-2], resized.shape[-1], s, self.test_crops)
        views = []
        for pos in positions:
            clip = resized[pos]
            views.extend(clip[:, :, y : y + s, x : x + s].permute(1, 0, 2, 3) for y, x in offsets)
        return {"video": torch.stack(views)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for attempt in range(self.max_retries + 1):
            j = (index + attempt * _RETRY_STRIDE) % len(self.records)
            record = self.records[j]
            generator = make_generator(self.seed, self.epoch, index, attempt)
            try:
                item = self._load(record, generator)
            except _DECODE_ERRORS as exc:
                skipped.append((str(record.path), _reason(exc)))
                continue
            return {**item, "label": int(record.label), "index": j, "skipped": skipped}
        last = "; ".join(f"{p}: {r}" for p, r in skipped[-3:])
        raise DataLoadError(f"item {index}: {len(skipped)} videos in a row failed to decode "
                            f"(max_retries={self.max_retries}); last: {last}")
