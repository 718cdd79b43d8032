"""The one reader the package uses: backend choice ("auto" or named), fallbacks, whole-file probes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from . import decord as decord_backend
from . import pyav
from . import torchcodec as torchcodec_backend
from .common import DecodeCounter, Source, VideoDecodeError, VideoSource

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "decord", "pyav", "torchcodec")

# "auto" falls back to PyAV when decord cannot copy a stream's frames (decord_backend.COPY_FAILURE) and
# remembers the stream's (codec, width, height, pixel format) for the rest of the process, so the next
# file of that kind skips the failing decord attempt.
_decord_unfit: set[tuple] = set()


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; one of {', '.join(BACKENDS)}")


def _auto_uses_decord(container) -> bool:
    """Judged from the container's header (format and codec), not from the file name: decord's seeks are
    exact there (DECORD_CODECS in SEEKABLE_FORMATS) and PyAV cannot skip the frames a clip does not want
    (SKIP_NONREF_CODECS, where PyAV decodes far fewer frames than decord: docs/BENCHMARKS.md)."""
    if not container.streams.video:
        return False
    codec = container.streams.video[0].codec_context.name
    return (pyav.is_seekable_format(container) and codec in decord_backend.DECORD_CODECS
            and codec not in pyav.SKIP_NONREF_CODECS)


def _stream_signature(container) -> tuple:
    ctx = container.streams.video[0].codec_context
    return (ctx.name, ctx.width, ctx.height, str(ctx.pix_fmt))


class VideoReader:
    """One open video; read several index sets (test views, repeated clips) without reopening.

    ``source`` is a path, the encoded bytes, or a binary file object; ``name`` (default: the path) is what
    errors name, e.g. a shard member's key. ``num_frames`` is what the container lists (exact for intact
    files, found without decoding); ``get`` raises VideoDecodeError when a requested frame lies beyond what
    actually decodes. "auto" uses decord where its seeks are exact and PyAV has no way to skip unwanted
    frames (VP9 in MP4/MKV/WebM), PyAV elsewhere: H.264, where PyAV's seek path never decodes the disposable
    frames a clip skips, and every container or codec decord gets wrong (torchcodec, exact in all of
    SEEKABLE_FORMATS, was nowhere more than a few per cent faster than the exact alternative on the CPU:
    docs/BENCHMARKS.md); a decord failure is retried with PyAV, whose diagnosis is the one reported.
    ``backend`` tells which one is reading.
    """

    def __init__(self, source: Source, backend: str = "auto", name: str | None = None) -> None:
        check_backend(backend)
        self.source = VideoSource(source, name)
        self.path = self.source.name
        self.source.check()
        self._auto = backend == "auto"
        self.backend = backend
        self._signature: tuple | None = None
        self._impl = self._open()
        self.num_frames: int = self._impl.num_frames
        self.fps: float = self._impl.fps

    def _open(self):
        if self.backend == "decord":
            return decord_backend.DecordReader(self.source)
        if self.backend == "pyav":
            return pyav.PyAVReader(self.source)
        if self.backend == "torchcodec":
            return torchcodec_backend.TorchCodecReader(self.source)
        # auto: PyAV's header parse (a few ms) tells whether decord can be trusted with this file
        container = pyav.open_av(self.source)
        if _auto_uses_decord(container):
            self._signature = _stream_signature(container)
        if self._signature is not None and self._signature not in _decord_unfit:
            container.close()
            self.backend = "decord"
            try:
                return decord_backend.DecordReader(self.source)
            except VideoDecodeError:
                container = None
        self.backend = "pyav"
        return pyav.PyAVReader(self.source, container=container)

    @property
    def counter(self) -> DecodeCounter | None:
        """Frames decoded / converted so far, where the backend can count them (PyAV), else None."""
        return getattr(self._impl, "counter", None)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (K, H, W, 3): the frames at ``indices`` (repeats and any order allowed), each decoded once."""
        try:
            return self._impl.get(indices)
        except VideoDecodeError as exc:
            if not (self._auto and self.backend == "decord"):
                raise
            if decord_backend.COPY_FAILURE in exc.reason and self._signature is not None:
                _decord_unfit.add(self._signature)
        self._impl.close()
        self.backend = "pyav"
        self._impl = pyav.PyAVReader(self.source)
        return self._impl.get(indices)

    def get_frames(self, indices: Sequence[int]) -> tuple[torch.Tensor, str]:
        """The frames at ``indices`` as a worker ships them: ``(uint8 (K, H * 3 / 2, W) I420, matrix)`` where the
        backend hands over 4:2:0 frames the device can convert (PyAV; ``pyav.YUV_MATRICES``), else
        ``(uint8 (K, H, W, 3), "rgb")``, as ``get``. The device converts (``finishing.finish_clips``)."""
        if isinstance(self._impl, pyav.PyAVReader):
            return self._impl.get_yuv(indices)
        return self.get(indices), "rgb"

    def decode_only(self, indices: Sequence[int]) -> int:
        """Decode the frames at ``indices`` as ``get`` does, without the conversion to RGB where the backend can
        leave it out (PyAV); the number of distinct frames. The decoder's own cost, for benchmarks."""
        if hasattr(self._impl, "decode_only"):
            return self._impl.decode_only(indices)
        self._impl.get(indices)  # decord and torchcodec convert inside their decode
        return len(set(indices))

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_frames(source: Source, indices: Sequence[int], backend: str = "auto",
                name: str | None = None) -> torch.Tensor:
    """uint8 (len(indices), H, W, 3): exactly the frames at ``indices``; raises VideoDecodeError."""
    with VideoReader(source, backend, name) as reader:
        return reader.get(indices)


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int      # frames a forward decode actually delivers
    listed_frames: int   # what the container claims (header count, else demuxed packets)
    fps: float

    @property
    def truncated(self) -> bool:
        return self.num_frames < self.listed_frames


def probe_video(source: Source, backend: str = "auto", name: str | None = None) -> VideoInfo:
    """Decode the whole file (no RGB conversion with PyAV) and compare with what the container claims.

    ``num_frames`` ends before the first frame PyAV flags as corrupt (decord cannot tell).

    "auto" probes with PyAV: it skips the RGB conversion and names the problem when nothing decodes.
    """
    check_backend(backend)
    video = VideoSource(source, name)
    video.check()
    if backend == "decord":
        return VideoInfo(*decord_backend.probe_frames(video))
    if backend == "torchcodec":
        return VideoInfo(*torchcodec_backend.probe_frames(video))
    return VideoInfo(*pyav.probe_frames(video))


def count_frames(source: Source, backend: str = "auto", name: str | None = None) -> int:
    """The number of frames a forward decode actually delivers (not a header guess)."""
    return probe_video(source, backend, name).num_frames
