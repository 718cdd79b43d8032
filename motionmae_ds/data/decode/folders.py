"""JPEG (or any PIL-readable) frame folders: frame i is the file ``template.format(start + i)``."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .common import VideoDecodeError, check_indices, one_line, pick

if TYPE_CHECKING:
    import torch


def read_frame_folder(
    dirpath: str | os.PathLike,
    indices: Sequence[int],
    template: str = "img_{:05d}.jpg",
    start: int = 1,
) -> torch.Tensor:
    """uint8 (K, H, W, 3) from image files named ``template.format(start + index)``."""
    from PIL import Image

    indices = check_indices(indices)
    dirpath = str(dirpath)
    if not os.path.isdir(dirpath):
        raise VideoDecodeError(dirpath, "frame folder not found")
    frames: dict[int, np.ndarray] = {}
    for i in sorted(set(indices)):
        name = os.path.join(dirpath, template.format(start + i))
        try:
            with Image.open(name) as image:
                frames[i] = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise VideoDecodeError(dirpath, f"frame {i} missing: {os.path.basename(name)}") from None
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(dirpath, f"frame {i} ({os.path.basename(name)}) unreadable: "
                                            f"{one_line(exc)}") from None
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(dirpath, f"frames differ in size: {sorted(shapes)}")
    return pick(frames, indices)


def count_present_frames(dirpath: str | os.PathLike, template: str = "img_{:05d}.jpg", start: int = 1) -> int:
    """Consecutive frame files ``template.format(start), template.format(start + 1), ...`` that exist (0 if
    none), without opening them: cheap enough for every sample; an unreadable one fails when it is read."""
    dirpath = str(dirpath)
    if not os.path.isdir(dirpath):
        raise VideoDecodeError(dirpath, "frame folder not found")
    limit, count = len(os.listdir(dirpath)), 0
    while count < limit and os.path.exists(os.path.join(dirpath, template.format(start + count))):
        count += 1
    return count


def count_decodable_frames(dirpath: str | os.PathLike, template: str = "img_{:05d}.jpg", start: int = 1) -> int:
    """Consecutive images ``template.format(start), template.format(start + 1), ...`` that decode: what a
    list scan trusts.

    Stops at the first missing or undecodable file: frames after a gap cannot be addressed by index.
    """
    from PIL import Image

    dirpath = str(dirpath)
    if not os.path.isdir(dirpath):
        raise VideoDecodeError(dirpath, "frame folder not found")
    count = 0
    while True:
        name = os.path.join(dirpath, template.format(start + count))
        if not os.path.isfile(name):
            break
        try:
            with Image.open(name) as image:
                image.load()
        except Exception:  # noqa: BLE001 - an unreadable frame ends the usable part of the folder
            break
        count += 1
    if count == 0:
        raise VideoDecodeError(dirpath, f"no readable frame {template.format(start)!r}")
    return count
