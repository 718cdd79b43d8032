"""The clip's last steps, on the device of the step: workers decode and cut, the accelerator finishes.

A training item leaves its worker as uint8 frames plus, per clip (view), what to do with them: the frames'
positions, the crop box, the flip and the random-erasing box (``View``). The decoders write the frames straight into
shared memory inside a worker (``decode.common.frame_buffer``), and ``collate_clips`` packs a batch without copying
them (``PackedClips``: one pinned, non-blocking host-to-device copy per item); ``finish_clips`` then, on the device
and for every clip, picks its frames, crops the box, resizes it to S x S (bilinear with antialiasing, in float),
flips, and for the whole batch converts and normalises, then erases. Validation and test items are uint8 at their
final size, ``(3, T, S, S)`` / ``(V, 3, T, S, S)``; ``finish_clips`` only converts and normalises them.

Mean and std are arguments (the config's ``data.mean`` / ``data.std``); their tensors are made once per device
(``_stats``), so the step copies nothing from the host but the batch itself.

Pixels differ from the pre-#33 worker path (swscale's RGB frames, uint8 resize on the CPU, rounded, normalised) by
the resize's rounding (RGB frames: within 1.5 levels of 255) and, for 4:2:0 frames, by the conversion (device vs
swscale: within 2 levels; a finished clip within 3.5); docs/DATA.md has the numbers measured on real clips
(``bench/finishing_error.py``), tests/data/clip_reference.py the bounds the tests hold.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width)


@dataclass(frozen=True)
class View:
    """One clip of an item: ``positions`` index the item's frames; ``erase`` is (top, left, h, w, noise seed) of
    the random-erasing box at the output size, or None."""

    positions: tuple[int, ...]
    box: Box
    flip: bool = False
    erase: tuple[int, int, int, int, int] | None = None


# Limited-range YUV -> RGB, by matrix: (Kr, Kb) of BT.601 and BT.709 (decode.pyav.YUV_MATRICES names them)
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
FORMATS = ("rgb", *_KR_KB)


def frame_size(frames: torch.Tensor, fmt: str) -> tuple[int, int]:
    """(H, W) of an item's frames: (U, H, W, 3) "rgb", or (U, H * 3 / 2, W) I420 (any matrix of ``_KR_KB``)."""
    if fmt == "rgb":
        return int(frames.shape[1]), int(frames.shape[2])
    return int(frames.shape[1]) * 2 // 3, int(frames.shape[2])


class PackedClips:
    """A training batch: ``frames[i]`` is item i's uint8 frames in ``formats[i]`` (``frame_size``), ``views[i]`` its
    clips; ``len`` is the number of items (videos). DataLoader's pin_memory calls ``pin_memory()``; the step
    ``to(device, non_blocking=True)``."""

    def __init__(self, frames: list[torch.Tensor], views: list[list[View]], formats: list[str] | None = None) -> None:
        self.frames, self.views = frames, views
        self.formats = formats if formats is not None else ["rgb"] * len(frames)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def num_clips(self) -> int:
        return sum(len(v) for v in self.views)

    @property
    def clips_per_item(self) -> int:
        return len(self.views[0])

    def pin_memory(self, device: Any = None) -> "PackedClips":
        return PackedClips([f.pin_memory() for f in self.frames], self.views, self.formats)

    def is_pinned(self) -> bool:
        return all(f.is_pinned() for f in self.frames)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedClips":
        return PackedClips([f.to(device, non_blocking=non_blocking) for f in self.frames], self.views, self.formats)


def pack_items(frames: Sequence[torch.Tensor], views: Sequence[Sequence[View]],
               formats: Sequence[str] | None = None) -> PackedClips:
    """One ``PackedClips`` from the items' frames, views and frame formats (default "rgb"); nothing is copied."""
    formats = list(formats) if formats is not None else ["rgb"] * len(frames)
    if len({len(v) for v in views}) > 1:
        raise ValueError("every item of a batch must hold the same number of clips")
    for f, fmt in zip(frames, formats):
        if fmt not in FORMATS:
            raise ValueError(f"frame format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if f.dtype != torch.uint8 or (fmt == "rgb" and (f.dim() != 4 or f.shape[-1] != 3)) or (
                fmt != "rgb" and (f.dim() != 3 or f.shape[1] % 3 or f.shape[2] % 2)):
            raise ValueError(f"{fmt} item frames of the wrong type or shape: {f.dtype} {tuple(f.shape)}")
    return PackedClips(list(frames), [list(v) for v in views], formats)


@functools.lru_cache(maxsize=16)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(255 * mean, 1 / (255 * std)) as fp32 (1, C, 1, 1, 1) on ``device``, made once per device."""
    shape = (1, len(mean), 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float64).mul(255.0).float().reshape(shape)
    s = torch.tensor(std, dtype=torch.float64).mul(255.0).reciprocal().float().reshape(shape)
    return m.to(device), s.to(device)


def normalize_batch(videos: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or float in [0, 255]) (..., C, T, H, W) -> float32 ``(x / 255 - mean) / std``, on its own device."""
    m, s = _stats(tuple(float(x) for x in mean), tuple(float(x) for x in std), videos.device)
    lead = videos.dim() - 4
    m, s = m.reshape((1,) * lead + m.shape[1:]), s.reshape((1,) * lead + s.shape[1:])
    return videos.float().sub_(m).mul_(s) if videos.dtype != torch.float32 else (videos - m).mul_(s)


def _select(frames: torch.Tensor, positions: tuple[int, ...]) -> torch.Tensor:
    """frames[positions] without an index tensor (which would be a host copy on an accelerator): a strided slice
    when the positions are evenly spaced, else a stack of single frames."""
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(positions, positions[1:])):
        return frames[positions[0]:positions[-1] + 1:step]
    return torch.stack([frames[p] for p in positions])


def yuv_to_rgb(frames: torch.Tensor, positions: tuple[int, ...], box: Box, matrix: str) -> torch.Tensor:
    """float (T, 3, h, w) in [0, 255]: the ``box`` of the I420 frames at ``positions``, converted as swscale converts
    4:2:0 at the same size (limited range, ``matrix``, each chroma sample for its 2 x 2 luma pixels, truncated)."""
    height, width = frame_size(frames, matrix)
    top, left, h, w = box
    clip = _select(frames, positions).reshape(len(positions), -1)
    luma = clip[:, : height * width].view(-1, height, width)[:, top:top + h, left:left + w].float()
    # the chroma rows and columns that cover the box, each repeated for its two luma rows and columns
    r0, c0, r1, c1 = top // 2, left // 2, (top + h - 1) // 2 + 1, (left + w - 1) // 2 + 1
    luma_size, quarter = height * width, (height // 2) * (width // 2)
    chroma = []
    for k in range(2):
        start = luma_size + k * quarter
        plane = clip[:, start:start + quarter].view(-1, height // 2, width // 2)
        part = plane[:, r0:r1, c0:c1]  # each sample twice along rows and columns (expand: no device-side size)
        n, ph, pw = part.shape
        up = part[:, :, None, :, None].expand(n, ph, 2, pw, 2).reshape(n, 2 * ph, 2 * pw)
        chroma.append(up[:, top - 2 * r0: top - 2 * r0 + h, left - 2 * c0: left - 2 * c0 + w].float().sub_(128.0))
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    y = luma.sub_(16.0).mul_(255.0 / 219.0)
    cb, cr = chroma[0].mul_(255.0 / 224.0), chroma[1].mul_(255.0 / 224.0)
    r = y + cr * (2.0 * (1.0 - kr))
    g = y - cb * (2.0 * kb * (1.0 - kb) / kg) - cr * (2.0 * kr * (1.0 - kr) / kg)
    b = y + cb * (2.0 * (1.0 - kb))
    # swscale's tables truncate: floor matches its output to within its fixed-point error (docs/DATA.md)
    return torch.stack((r, g, b), dim=1).floor_().clamp_(0.0, 255.0)


def resize_clip(clip: torch.Tensor, size: int) -> torch.Tensor:
    """float (T, C, h, w) -> (T, C, size, size): bilinear with antialiasing (what PIL's BILINEAR does when it
    shrinks); unchanged when already that size."""
    if tuple(clip.shape[-2:]) == (size, size):
        return clip
    return F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def finish_clips(video: Any, device: torch.device, size: int, mean: Sequence[float], std: Sequence[float]
                 ) -> torch.Tensor:
    """The model's input on ``device``: float32 (N, 3, T, S, S) normalised clips.

    ``video`` is a ``PackedClips`` (training: N = items x clips per item, item-major), or a uint8 tensor
    (..., 3, T, S, S) at its final size (evaluation; the leading dims are kept)."""
    if not isinstance(video, PackedClips):
        return normalize_batch(video.to(device, non_blocking=True), mean, std)
    moved = video.to(device, non_blocking=True)
    clips, erases = [], []
    for frames, views, fmt in zip(moved.frames, moved.views, moved.formats):
        for view in views:
            top, left, h, w = view.box
            if (fmt == "rgb") != (frames.dim() == 4):
                raise ValueError(f"{fmt} frames of shape {tuple(frames.shape)} (formats {moved.formats})")
            if fmt == "rgb":
                clip = _select(frames, view.positions)[:, top:top + h, left:left + w].permute(0, 3, 1, 2).float()
            else:
                clip = yuv_to_rgb(frames, view.positions, view.box, fmt)
            clip = resize_clip(clip, size)
            clips.append((clip.flip(-1) if view.flip else clip).transpose(0, 1))  # (3, T, S, S)
            erases.append(view.erase)
    out = normalize_batch(torch.stack(clips), mean, std)
    for n, erase in enumerate(erases):
        if erase is not None:
            top, left, h, w, seed = erase
            gen = torch.Generator(device=out.device)
            gen.manual_seed(seed)
            noise = torch.randn((out.shape[1], out.shape[2], h, w), generator=gen, device=out.device)
            out[n, :, :, top:top + h, left:left + w] = noise
    return out
