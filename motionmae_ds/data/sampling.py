"""Which frames and which spatial windows a clip is made of.

Pure functions of their arguments (and of the generator passed in), so a data sample is a function of
(seed, epoch, index) only: ``derive_seed`` turns those into a generator seed.

Conventions
-----------
- A clip of ``clip_len`` frames at ``stride`` spans ``(clip_len - 1) * stride + 1`` source frames; a video
  "fits" the stride when it has at least that many frames.
- A video too short for the configured stride gets the largest stride that fits; a video shorter than
  ``clip_len`` gets stride 1 and its last frame repeated until the clip is full.
- ``start_idx`` shifts all indices, for list formats (VideoMAEv2) whose clip starts inside a longer file.

Two samplings (``data.sampling``, finetuning and evaluation; pretraining is always dense):
- ``dense``: ``clip_len`` consecutive frames at ``stride`` (K400, UCF101).
- ``segment`` (TSN-style, VideoMAE's SSv2 protocol): the video's ``n`` frames, read as the time interval
  ``[0, n)`` where frame ``f`` occupies ``[f, f + 1)``, are cut into ``clip_len`` equal segments
  ``[k n / T, (k + 1) n / T)``; a clip takes the frame under one point of each segment, so every clip spans the
  whole video. Training draws the point uniformly inside the segment (frame ``f`` is chosen with probability
  proportional to its overlap with the segment); evaluation view ``j`` of ``K`` takes the point at offset
  ``(1/2 + j/K) mod 1`` of every segment: one view is the segments' centres, and with ``K = 2`` the other is
  their starts, exactly VideoMAE's two SSv2 test views (``int(tick / 2 + tick * k)`` and ``int(tick * k)``,
  ``tick = n / T``). A video shorter than ``clip_len`` has segments shorter than a frame: the clip is still
  sorted, and frames repeat (about ``T / n`` times each) instead of VideoMAE's all-zero index list there.
  VideoMAE's training draw uses ``n // T``-frame segments from frame 0, so it never samples the last
  ``n mod T`` frames; ours cuts the whole video.
"""

from __future__ import annotations

import math

import torch

_MASK64 = (1 << 64) - 1
SAMPLINGS = ("dense", "segment")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integer parts (splitmix64 over each part).

    Used instead of ``hash(tuple)`` because Python salts hashes of some types per process, and instead of
    ``seed + epoch * N + index`` because additive schemes make (epoch, index) pairs collide.
    """
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1  # torch.Generator.manual_seed wants a value that fits in int64


def make_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from ``derive_seed(*parts)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen


def _check(num_frames: int, clip_len: int, stride: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames of the video must be >= 1, got {num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if stride < 1:
        raise ValueError(f"stride (sampling_rate) must be >= 1, got {stride}")


def effective_stride(num_frames: int, clip_len: int, stride: int) -> int:
    """The largest stride <= ``stride`` whose clip span fits in ``num_frames`` (at least 1)."""
    _check(num_frames, clip_len, stride)
    if clip_len == 1:
        return stride
    return max(1, min(stride, (num_frames - 1) // (clip_len - 1)))


def clip_span(clip_len: int, stride: int) -> int:
    """Number of source frames from the first to the last frame of a clip, inclusive."""
    return (clip_len - 1) * stride + 1


def _clip_from_start(start: int, num_frames: int, clip_len: int, stride: int, start_idx: int) -> list[int]:
    # min() repeats the last frame for videos shorter than clip_len (stride is 1 there).
    return [start_idx + min(start + i * stride, num_frames - 1) for i in range(clip_len)]


def train_clip_indices(
    num_frames: int, clip_len: int, stride: int, generator: torch.Generator | None = None, start_idx: int = 0
) -> list[int]:
    """Frame indices of one training clip: ``clip_len`` frames at ``stride`` from a uniform random start."""
    s = effective_stride(num_frames, clip_len, stride)
    max_start = max(0, num_frames - clip_span(clip_len, s))
    start = int(torch.randint(0, max_start + 1, (1,), generator=generator).item())
    return _clip_from_start(start, num_frames, clip_len, s, start_idx)


def uniform_clip_indices(
    num_frames: int, clip_len: int, stride: int, num_clips: int, start_idx: int = 0
) -> list[list[int]]:
    """``num_clips`` clips covering the video uniformly: the video is cut into ``num_clips`` equal segments
    and each clip is centred on its segment (clamped to the video), so one clip is the centre clip."""
    if num_clips < 1:
        raise ValueError(f"num_clips (test_clips) must be >= 1, got {num_clips}")
    s = effective_stride(num_frames, clip_len, stride)
    span = clip_span(clip_len, s)
    max_start = max(0, num_frames - span)
    clips = []
    for k in range(num_clips):
        centre = (k + 0.5) * num_frames / num_clips
        start = min(max(math.floor(centre - span / 2 + 0.5), 0), max_start)
        clips.append(_clip_from_start(start, num_frames, clip_len, s, start_idx))
    return clips


def _segment_frames(num_frames: int, clip_len: int, offsets: "torch.Tensor", start_idx: int) -> list[int]:
    # frame under the point (k + offset_k) * n / T of segment k, in exact integer arithmetic where the offsets
    # are multiples of 1 / (2 K) (evaluation) and float64 otherwise; min() guards offsets rounding up to 1
    n, t = num_frames, clip_len
    points = (torch.arange(t, dtype=torch.float64) + offsets.to(torch.float64)) * n / t
    return [start_idx + min(int(math.floor(p)), n - 1) for p in points.tolist()]


def segment_train_indices(
    num_frames: int, clip_len: int, generator: torch.Generator | None = None, start_idx: int = 0
) -> list[int]:
    """Frame indices of one training clip under segment sampling: one uniformly drawn point per segment."""
    _check(num_frames, clip_len, 1)
    return _segment_frames(num_frames, clip_len, torch.rand(clip_len, generator=generator, dtype=torch.float64),
                           start_idx)


def segment_eval_indices(num_frames: int, clip_len: int, num_clips: int, start_idx: int = 0) -> list[list[int]]:
    """``num_clips`` evaluation views under segment sampling; view ``j`` takes every segment's point at offset
    ``(1/2 + j / num_clips) mod 1``: view 0 the centres, view 1 of 2 the starts (VideoMAE's SSv2 views)."""
    _check(num_frames, clip_len, 1)
    if num_clips < 1:
        raise ValueError(f"num_clips (test_clips) must be >= 1, got {num_clips}")
    n, t, views = num_frames, clip_len, []
    for j in range(num_clips):
        # offset o = (K + 2 j) / (2 K) mod 1; the point (k + o) n / T = ((2 K k + 2 K o) n) / (2 K T) exactly
        num = (num_clips + 2 * j) % (2 * num_clips)
        views.append([start_idx + min(((2 * num_clips * k + num) * n) // (2 * num_clips * t), n - 1)
                      for k in range(t)])
    return views


def train_indices(sampling: str, num_frames: int, clip_len: int, stride: int,
                  generator: torch.Generator | None = None, start_idx: int = 0) -> list[int]:
    """One training clip under ``sampling`` (``dense``: ``stride`` applies; ``segment``: it does not)."""
    if sampling == "segment":
        return segment_train_indices(num_frames, clip_len, generator, start_idx)
    _check_sampling(sampling)
    return train_clip_indices(num_frames, clip_len, stride, generator, start_idx)


def eval_indices(sampling: str, num_frames: int, clip_len: int, stride: int, num_clips: int,
                 start_idx: int = 0) -> list[list[int]]:
    """``num_clips`` evaluation clips under ``sampling`` (``num_clips=1``: the validation view, the centre
    clip or the segments' centres)."""
    if sampling == "segment":
        return segment_eval_indices(num_frames, clip_len, num_clips, start_idx)
    _check_sampling(sampling)
    return uniform_clip_indices(num_frames, clip_len, stride, num_clips, start_idx)


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


def spatial_crop_offsets(height: int, width: int, crop_size: int, num_crops: int = 3) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of ``num_crops`` square crops spread evenly along the longer side (first
    at the start, last at the end) and centred along the shorter side; one crop is the centre crop."""
    if crop_size > min(height, width):
        raise ValueError(f"crop size {crop_size} is larger than the frame {height}x{width}")
    if num_crops < 1:
        raise ValueError(f"num_crops (test_crops) must be >= 1, got {num_crops}")
    along_height = height > width
    long_free = (height if along_height else width) - crop_size
    short_free = (width if along_height else height) - crop_size
    centre = short_free // 2
    if num_crops == 1:
        positions = [long_free // 2]
    else:
        positions = [math.floor(k * long_free / (num_crops - 1) + 0.5) for k in range(num_crops)]
    return [(p, centre) if along_height else (centre, p) for p in positions]


def repeated_train_indices(sampling: str, num_frames: int, clip_len: int, stride: int, repeats: int,
                           generator: torch.Generator | None = None, start_idx: int = 0) -> list[list[int]]:
    """``repeats`` training clips of one video (repeated temporal sampling), each from its own random draw.

    Clip 0 is exactly ``train_indices`` (so ``repeats=1`` draws what a single clip draws); a later clip that
    starts where an earlier one does is redrawn (up to 32 times) while the video has room for distinct starts.
    """
    if repeats < 1:
        raise ValueError(f"repeats (num_repeats) must be >= 1, got {repeats}")
    clips: list[list[int]] = []
    starts: set[int] = set()
    room = num_frames if sampling == "segment" else \
        max(0, num_frames - clip_span(clip_len, effective_stride(num_frames, clip_len, stride))) + 1
    for _ in range(repeats):
        for _attempt in range(32):
            clip = train_indices(sampling, num_frames, clip_len, stride, generator, start_idx)
            if clip[0] not in starts or len(starts) >= room:
                break
        starts.add(clip[0])
        clips.append(clip)
    return clips
