"""The pre-#33 float path (crop and resize in uint8 in the worker, flip, normalise there), kept as the reference
the worker-cut + device-finished path is compared with, and helpers to finish dataset items on the CPU."""
from __future__ import annotations

import torch

from motionmae_ds.data.finishing import finish_clips, frame_size, yuv_to_rgb
from motionmae_ds.data.loader import collate_clips
from motionmae_ds.data.transforms import as_tchw, hflip, normalize, resized_crop, sample_resized_crop_box
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

CPU = torch.device("cpu")
# The device resizes in float and does not round to uint8 before normalising; the worker path resized in uint8
# (torch's fixed-point antialiased kernel) and rounded: within 1.5 levels of 255 (docs/DATA.md).
PIXEL_BOUND = 1.5
# 4:2:0 frames converted to RGB on the device against swscale's conversion (its fixed-point tables): 2 levels, and
# a finished clip made from them (conversion, then the resize's rounding) 3.5
RGB_BOUND = 2.0
YUV_PIXEL_BOUND = 3.5


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


def item_rgb(item: dict, positions) -> torch.Tensor:
    """float (T, H, W, 3): the item's frames at ``positions`` in RGB, converted as the device converts them."""
    fmt, frames = item.get("frame_format", "rgb"), item["video"]
    if fmt == "rgb":
        return frames[list(positions)].double()
    height, width = frame_size(frames, fmt)
    return yuv_to_rgb(frames, tuple(positions), (0, 0, height, width), fmt).permute(0, 2, 3, 1).double()


def assert_same_frames(item: dict, positions, ref) -> None:
    """The item's frames are the reference decode's frames: equal in RGB, or within the conversion's rounding
    (``RGB_BOUND``) when they travel as 4:2:0."""
    got, want = item_rgb(item, positions), torch.from_numpy(ref).double()
    if item.get("frame_format", "rgb") == "rgb":
        assert torch.equal(got, want)
    else:
        err = float((got - want).abs().max())
        assert err <= RGB_BOUND, f"converted frames {err:.2f} levels from swscale's (bound {RGB_BOUND})"


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


def assert_same_clip(new: torch.Tensor, old: torch.Tensor, item: dict | None = None) -> None:
    """``new`` (finished from ``item``) is ``old`` within the bound of the item's frame format."""
    bound = PIXEL_BOUND if item is None or item.get("frame_format", "rgb") == "rgb" else YUV_PIXEL_BOUND
    err = pixel_error(new, old)
    assert err <= bound, f"{err:.3f} pixel levels apart (bound {bound})"
