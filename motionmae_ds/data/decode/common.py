"""What every backend shares: the error type, the video source (a path or bytes in memory), index checks."""
from __future__ import annotations

import io
import os
import weakref
from collections import Counter
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

# A path, the encoded bytes (e.g. a WebDataset member), or a binary file object (read once, to its end).
Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


# Decoder objects that run threads of their own (decord's decoder runs one even with num_threads=1).
# A fork copies such an object into the child (a DataLoader worker) without its threads, and destroying
# the copy there (a close, or the garbage collector finding it) waits for ever for those threads to
# answer. So a child keeps every one it inherited alive until it exits: their memory is the parent's,
# shared copy-on-write, and workers leave through os._exit, which runs no destructor.
_THREADED: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list = []


def owns_threads(obj):
    """Register a decoder object whose destructor joins native threads; returns it."""
    _THREADED.add(obj)
    return obj


def _keep_inherited() -> None:
    _INHERITED.extend(_THREADED)
    _THREADED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keep_inherited)


class VideoDecodeError(Exception):
    """A video that cannot deliver the requested frames. ``str(e)`` is one line: ``path: reason``."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        # DataLoader workers re-raise exceptions as ``type(e)(message)``: accept a single argument too.
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) if reason is not None else ""
        super().__init__(f"{self.path}: {self.reason}" if reason is not None else self.path)

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class VideoSource:
    """Where the encoded video comes from: ``path`` on disk, or ``data`` in memory; ``name`` for messages.

    In-memory sources are held as one ``bytes`` object, so every (re)open reads from the start without
    touching the caller's file object again.
    """

    def __init__(self, source: Source, name: str | None = None) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.path: str | None = str(source)
            self.data: bytes | None = None
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.path, self.data = None, bytes(source)
        elif hasattr(source, "read"):
            data = source.read()
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"video file object must be opened in binary mode, read() gave {type(data).__name__}")
            self.path, self.data = None, bytes(data)
        else:
            raise TypeError(f"video source must be a path, bytes or a binary file object, got {type(source).__name__}")
        self.name = name if name is not None else (self.path if self.path is not None else f"<{len(self.data)} bytes>")

    def check(self) -> None:
        """Missing and empty inputs get their own reasons, before any decoder sees them."""
        if self.path is None:
            if not self.data:
                raise VideoDecodeError(self.name, "empty (0 bytes)")
            return
        if not os.path.exists(self.path):
            raise VideoDecodeError(self.name, "file not found")
        if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise VideoDecodeError(self.name, "file is empty (0 bytes)")

    def open(self) -> str | io.BytesIO:
        """What a decoder library opens: the path, or a fresh stream positioned at the first byte."""
        return self.path if self.path is not None else io.BytesIO(self.data)


class DecodeCounter:
    """How often each frame index went through the decoder and how many frames were converted to RGB.

    Only the PyAV backend can count (decord and torchcodec decode inside C++); tests use it to check
    that reading the union of several clips decodes every frame once.
    """

    def __init__(self) -> None:
        self.decoded: Counter[int] = Counter()
        self.converted = 0

    @property
    def total_decoded(self) -> int:
        return sum(self.decoded.values())


def check_indices(indices: Sequence[int]) -> list[int]:
    out = [int(i) for i in indices]
    if not out:
        raise ValueError("indices must not be empty")
    if min(out) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(out)}")
    return out


def frame_buffer(shape: tuple[int, ...]) -> "torch.Tensor":
    """An uninitialised uint8 tensor for decoded frames; inside a DataLoader worker in shared memory, so that the
    frames travel to the main process (and into the batch, ``finishing.PackedClips``) without another copy."""
    # torch is imported on first use so that scanning tools (prepare_data) start without it.
    import torch

    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    numel = 1
    for n in shape:
        numel *= n
    storage = torch.UntypedStorage._new_shared(numel)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def pick(frames: dict[int, np.ndarray], indices: list[int], to_array: Callable = np.asarray) -> "torch.Tensor":
    """uint8 (K, H, W, 3): the frames at ``indices`` copied once into a ``frame_buffer``; ``to_array`` turns a
    stored frame into its (H, W, 3) array (PyAV: converts it to RGB)."""
    first = to_array(frames[indices[0]])
    out = frame_buffer((len(indices), *first.shape))
    array = out.numpy()
    array[0] = first
    row = {indices[0]: 0}
    for k, i in enumerate(indices[1:], start=1):
        if i in row:  # a repeated index (short videos): the frame is converted once
            array[k] = array[row[i]]
        else:
            array[k] = to_array(frames[i])
            row[i] = k
    return out


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def count_until_failure(frames: Iterable, name: str, reason: Callable[[BaseException], str] = one_line) -> int:
    """How many frames ``frames`` yields before it ends or raises (a truncated tail: the frames before it
    are real); a failure before the first frame is the video's error, worded by ``reason``."""
    count = 0
    try:
        for _ in frames:
            count += 1
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        if count == 0:
            raise VideoDecodeError(name, f"no frame decodes: {reason(exc)}") from None
    return count


def check_range(name: str, indices: list[int], num_frames: int) -> None:
    if max(indices) >= num_frames:
        raise VideoDecodeError(name, f"frame {max(indices)} requested but the video has {num_frames} frames")
