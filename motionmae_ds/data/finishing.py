"""The clip's last steps, on the device of the step: workers decode and cut, the accelerator finishes.

A training item leaves its worker as uint8 frames plus, per clip (view), what to do with them: the frames'
positions, the crop box, the flip and the random-erasing box (``View``). ``collate_clips`` packs a batch into one
flat uint8 buffer (``PackedClips``: one pinned host-to-device copy per step); ``finish_clips`` then, on the device
and for every clip, picks its frames, crops the box, resizes it to S x S (bilinear with antialiasing, in float),
flips, and for the whole batch converts and normalises, then erases. Validation and test items are uint8 at their
final size, ``(3, T, S, S)`` / ``(V, 3, T, S, S)``; ``finish_clips`` only converts and normalises them.

Mean and std are arguments (the config's ``data.mean`` / ``data.std``); their tensors are made once per device
(``_stats``), so the step copies nothing from the host but the batch itself.

Pixels differ from the pre-#33 worker path (uint8 resize on the CPU, rounded, then normalised) only by that
rounding and the float kernel: at most 1/255 per pixel before normalisation (docs/DATA.md has the measured
numbers; tests/data/test_finishing.py holds the bound).
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


class PackedClips:
    """A training batch of uint8 frames in one flat buffer; ``len`` is the number of items (videos).

    ``shapes[i]`` is item i's frame tensor shape (U, H, W, 3) at ``offsets[i]`` in ``frames``; ``views[i]`` its
    clips. DataLoader's pin_memory calls ``pin_memory()``; the step calls ``to(device, non_blocking=True)``."""

    def __init__(self, frames: torch.Tensor, offsets: list[int], shapes: list[tuple[int, ...]],
                 views: list[list[View]]) -> None:
        self.frames, self.offsets, self.shapes, self.views = frames, offsets, shapes, views

    def __len__(self) -> int:
        return len(self.views)

    @property
    def num_clips(self) -> int:
        return sum(len(v) for v in self.views)

    @property
    def clips_per_item(self) -> int:
        return len(self.views[0])

    def pin_memory(self, device: Any = None) -> "PackedClips":
        return PackedClips(self.frames.pin_memory(), self.offsets, self.shapes, self.views)

    def is_pinned(self) -> bool:
        return self.frames.is_pinned()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedClips":
        return PackedClips(self.frames.to(device, non_blocking=non_blocking), self.offsets, self.shapes, self.views)

    def item_frames(self, i: int) -> torch.Tensor:
        """Item i's frames, uint8 (U, H, W, 3), a view of the buffer."""
        n = 1
        for s in self.shapes[i]:
            n *= s
        return self.frames[self.offsets[i]:self.offsets[i] + n].view(self.shapes[i])


def _shared_empty(numel: int, like: torch.Tensor) -> torch.Tensor:
    """An empty tensor for the batch; in a DataLoader worker in shared memory, as default_collate does, so that
    sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is not None:
        storage = like.untyped_storage()._new_shared(numel * like.element_size())
        return like.new(storage).view(-1)[:numel]
    return like.new_empty(numel)


def pack_items(frames: Sequence[torch.Tensor], views: Sequence[Sequence[View]]) -> PackedClips:
    """One ``PackedClips`` from the items' frames (uint8 (U, H, W, 3) each) and views."""
    if len({len(v) for v in views}) > 1:
        raise ValueError("every item of a batch must hold the same number of clips")
    sizes = [f.numel() for f in frames]
    out = _shared_empty(sum(sizes), frames[0])
    offsets, at = [], 0
    for f, n in zip(frames, sizes):
        out[at:at + n].copy_(f.reshape(-1))
        offsets.append(at)
        at += n
    return PackedClips(out, offsets, [tuple(f.shape) for f in frames], [list(v) for v in views])


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
    for i, views in enumerate(moved.views):
        frames = moved.item_frames(i)
        for view in views:
            top, left, h, w = view.box
            clip = _select(frames, view.positions)[:, top:top + h, left:left + w]
            clip = resize_clip(clip.permute(0, 3, 1, 2).float(), size)
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
