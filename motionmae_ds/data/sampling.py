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
"""

from __future__ import annotations

import math

import torch

_MASK64 = (1 << 64) - 1


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
