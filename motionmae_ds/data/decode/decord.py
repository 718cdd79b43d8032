"""decord (the maintained ``decord2`` fork): fast seeks, trusted only where they were shown to be exact."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .common import VideoDecodeError, VideoSource, check_indices, check_range, count_until_failure, owns_threads, pick

if TYPE_CHECKING:
    import torch

# Codecs whose decord seeks land on the right frames in SEEKABLE_FORMATS (tests/data/test_decode.py).
# decord returns neighbouring frames after seeks in AVI, MPEG-PS/TS, and for MPEG-4 Part 2 with
# B-frames even inside MP4/MKV: "auto" sends all of those to another backend.
DECORD_CODECS = ("h264", "vp9")
# decord hands back 4-channel frames for some small frame sizes and its copy into the RGB batch fails
# ("DECORDArrayCopyFromTo: The size must exactly match", dmlc/decord#336: 96x96 H.264 here, 72x72 there).
COPY_FAILURE = "DECORDArrayCopyFromTo"


def decord_reason(exc: BaseException) -> str:
    # decord's messages carry a C++ stack location before the useful part.
    text = " ".join(str(exc).split())
    marker = "Check failed:"
    return text[text.rfind(marker):][:300] if marker in text else text[:300]


class DecordReader:
    """In-memory sources go through decord's file-object path (it copies the bytes once)."""

    def __init__(self, source: VideoSource) -> None:
        import decord

        self.path = source.name
        try:
            self._reader = owns_threads(decord.VideoReader(source.open(), ctx=decord.cpu(0), num_threads=1))
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(self.path, f"cannot open: {decord_reason(exc)}") from None
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames")

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = check_indices(indices)
        check_range(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        try:
            batch = self._reader.get_batch(wanted).asnumpy()
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(self.path, f"decoding failed: {decord_reason(exc)}") from None
        if batch.shape[0] != len(wanted):
            raise VideoDecodeError(self.path, f"decoder returned {batch.shape[0]} of {len(wanted)} frames")
        return pick(dict(zip(wanted, batch)), indices)

    def close(self) -> None:
        self._reader = None


def probe_frames(source: VideoSource) -> tuple[int, int, float]:
    """(frames decord decodes in order, frames it lists, fps); decord cannot tell concealed damage."""
    reader = DecordReader(source)
    try:
        frames = (reader._reader.next() for _ in range(reader.num_frames))
        count = count_until_failure(frames, source.name, decord_reason)
    finally:
        reader.close()
    return count, reader.num_frames, reader.fps
