"""The pre-#33 float path (crop and resize in uint8 in the worker, flip, normalise there), kept as the reference
the worker-cut + device-finished path is compared with, and helpers to finish dataset items on the CPU."""
from __future__ import annotations

import torch

from motionmae_ds.data.finishing import finish_clips
from motionmae_ds.data.loader import collate_clips
from motionmae_ds.data.transforms import as_tchw, hflip, normalize, resized_crop, sample_resized_crop_box
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

CPU = torch.device("cpu")
# The device resizes in float and does not round to uint8 before normalising; the worker path resized in uint8
# (torch's fixed-point antialiased kernel) and rounded: within 1.5 levels of 255 (docs/DATA.md).
PIXEL_BOUND = 1.5


def old_train_clip(frames: torch.Tensor, generator: torch.Generator, size: int, scale=(0.5, 1.0),
                   ratio=(3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """float (3, T, S, S): the pre-#33 worker's pretraining clip (same draws: box, then flip)."""
    clip = as_tchw(frames)
    box = sample_resized_crop_box(clip.shape[-2], clip.shape[-1], scale, ratio, generator)
    clip = resized_crop(clip, box, size)
    if flip and torch.rand((), generator=generator).item() < 0.5:
        clip = hflip(clip)
    return normalize(clip, IMAGENET_MEAN, IMAGENET_STD)


def finished(item: dict, size: int) -> torch.Tensor:
    """float (R, 3, T, S, S): a training item's clips as the step gets them (finished on the CPU)."""
    return finish_clips(collate_clips([item])["video"], CPU, size, IMAGENET_MEAN, IMAGENET_STD)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised (..., 3, T, H, W) back to pixel levels 0..255 (float64)."""
    shape = (3, 1, 1, 1)
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(shape) * 255
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(shape) * 255
    return x.double() * s + m


def pixel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two normalised clips in pixel levels."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((pixels(a) - pixels(b)).abs().max())


def assert_same_clip(new: torch.Tensor, old: torch.Tensor) -> None:
    err = pixel_error(new, old)
    assert err <= PIXEL_BOUND, f"{err:.3f} pixel levels apart (bound {PIXEL_BOUND})"
