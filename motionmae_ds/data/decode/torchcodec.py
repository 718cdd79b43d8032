"""torchcodec (PyTorch's decoder) in exact seek mode: a scan at open indexes every frame, then seeks.

Exact in the containers of ``pyav.SEEKABLE_FORMATS`` for every codec the tests make (MPEG-4 Part 2 with
B-frames in MP4 too); in AVI and MPEG-PS it loses the last frame and in MPEG-TS it returns neighbouring
frames (tests/data/test_decode.py). On the CPU it is not ahead of decord or PyAV on any kind of file by more
than the noise (docs/BENCHMARKS.md), so "auto" does not choose it; name it with
``data.decode_backend: torchcodec``. It needs FFmpeg 4-8 shared libraries on the system (``libavutil.so.56``
... ``.so.60``): where they are missing, opening a video raises BackendUnavailable (a setup error, not a bad
video) with what to install.
"""
from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Sequence

from .common import VideoDecodeError, VideoSource, check_indices, check_range, count_until_failure

if TYPE_CHECKING:
    import torch


class BackendUnavailable(RuntimeError):
    """The backend's library cannot load on this machine: a setup problem, not a bad video."""


@functools.lru_cache(maxsize=None)
def _load() -> tuple[object | None, str]:
    """(the VideoDecoder class or None, why not), once per process."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        return None, f"torchcodec is not installed ({exc})"
    except (RuntimeError, OSError) as exc:  # libtorchcodec found no FFmpeg it was built against
        missing = sorted(set(re.findall(r"libavutil\.so\.\d+", str(exc))))
        return None, ("libtorchcodec cannot load FFmpeg: none of " + ", ".join(missing) + " found; install the "
                      "FFmpeg shared libraries (Debian 12: apt-get install libavcodec59 libavformat59 libavdevice59 "
                      "libavfilter8 libswscale6)") if missing else " ".join(str(exc).split())[:300]
    return VideoDecoder, ""


def available() -> bool:
    return _load()[0] is not None


def torchcodec_reason(exc: BaseException) -> str:
    # torchcodec's messages start with the C++ function and source location.
    text = " ".join(str(exc).split())
    text = re.sub(r"^.*?\.cpp:\d+,\s*", "", text)
    return text.split(" This should never happen")[0][:300]


class TorchCodecReader:
    """One decoder thread, frames as uint8 (K, H, W, 3) on the CPU; in-memory sources are decoded from bytes."""

    def __init__(self, source: VideoSource) -> None:
        decoder_class, why = _load()
        if decoder_class is None:
            raise BackendUnavailable(f"decode backend 'torchcodec' is unavailable: {why}")
        self.path = source.name
        try:
            self._decoder = decoder_class(source.path if source.path is not None else source.data,
                                          seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
            meta = self._decoder.metadata
            self.num_frames = int(meta.num_frames or 0)
            self.fps = float(meta.average_fps or 0.0)
        except Exception as exc:  # noqa: BLE001 - any failure to open is a property of the file
            reason = torchcodec_reason(exc)
            reason = "no video stream" if "best video stream is unknown" in reason else f"cannot open: {reason}"
            raise VideoDecodeError(self.path, reason) from None
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames")

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        import torch

        indices = check_indices(indices)
        check_range(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        try:
            batch = self._decoder.get_frames_at(wanted).data
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(self.path, f"frame {wanted[-1]} requested but decoding failed: "
                                   f"{torchcodec_reason(exc)}") from None
        if batch.shape[0] != len(wanted) or batch.dim() != 4 or batch.shape[-1] != 3:
            raise VideoDecodeError(self.path, f"decoder returned frames of shape {tuple(batch.shape)} for "
                                   f"{len(wanted)} requested")
        position = {frame: row for row, frame in enumerate(wanted)}
        return batch[torch.tensor([position[i] for i in indices])].contiguous()

    def close(self) -> None:
        self._decoder = None


def probe_frames(source: VideoSource) -> tuple[int, int, float]:
    """(frames that decode in order, frames the scan found, fps); torchcodec cannot tell concealed damage."""
    reader = TorchCodecReader(source)
    try:
        count = count_until_failure(reader._decoder, source.name, torchcodec_reason)
    finally:
        reader.close()
    return count, reader.num_frames, reader.fps
