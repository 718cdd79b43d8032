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


# Debian 12 (FFmpeg 5): the packages of the libraries libtorchcodec_core5 links
DEBIAN_PACKAGES = "libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4"
_OTHER_BACKENDS = "or set data.decode_backend to auto, pyav or decord (their wheels bring their own FFmpeg)"


def ffmpeg_load_failures(text: str) -> dict[int, tuple[str, str]]:
    """{FFmpeg major version: (library, what the loader said)} from torchcodec's "Could not load libtorchcodec"
    message, which holds one loading traceback per FFmpeg version it tried."""
    failures = {}
    for version, body in re.findall(r"FFmpeg version (\d+):\n(.*?)(?=FFmpeg version \d+:|\[end of|\Z)", text, re.S):
        found = re.search(r"OSError: (\S+?): (.+)", body)
        if found:
            failures[int(version)] = (found.group(1).rsplit("/", 1)[-1], found.group(2).strip())
    return failures


def ffmpeg_reason(text: str) -> str:
    """What a user must install, from torchcodec's loading error: the library that failed to load in the FFmpeg
    version that is partly there (any of its libraries: libavutil, libavcodec, libavfilter, ...), or all of
    FFmpeg when no version is there at all."""
    failures = ffmpeg_load_failures(text)
    if not failures:
        return " ".join(text.split())[:300]
    # a version whose libavutil cannot be found is simply not installed; any other failure is one that is
    partly = {v: f for v, f in failures.items() if not (f[0].startswith("libavutil.so.") and "cannot open" in f[1])}
    if partly:
        named = "; ".join(f"FFmpeg {v}: {lib}: {why}" for v, (lib, why) in sorted(partly.items(), reverse=True))
        packages = " ".join(sorted({re.sub(r"\.so\.", "", lib) for lib, _ in partly.values()}))
        return (f"libtorchcodec cannot load FFmpeg ({named}); install or repair that library (Debian: apt-get "
                f"install {packages}; all of Debian 12's: {DEBIAN_PACKAGES}), {_OTHER_BACKENDS}")
    versions = ", ".join(str(v) for v in sorted(failures))
    return (f"libtorchcodec found no FFmpeg shared libraries (tried FFmpeg {versions}: no libavutil); install them "
            f"(Debian 12: apt-get install {DEBIAN_PACKAGES}), {_OTHER_BACKENDS}")


@functools.lru_cache(maxsize=None)
def _load() -> tuple[object | None, str]:
    """(the VideoDecoder class or None, why not), once per process."""
    try:
        from torchcodec._core import ops as core_ops
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        return None, f"torchcodec is not installed ({exc}); pip install torchcodec, {_OTHER_BACKENDS}"
    except (RuntimeError, OSError) as exc:  # torchcodec releases that load FFmpeg at import
        return None, ffmpeg_reason(str(exc))
    # torchcodec imports without FFmpeg (its image decoders need none) and fails at the first video: ask now
    if not getattr(core_ops, "_FFMPEG_AVAILABLE", True):
        try:
            core_ops.load_core_libraries()
        except Exception as exc:  # noqa: BLE001 - whatever the loader raised is the reason
            return None, ffmpeg_reason(str(exc))
    return VideoDecoder, ""


def available() -> bool:
    return _load()[0] is not None


def require() -> None:
    """Raise BackendUnavailable (what to install) where torchcodec cannot decode videos on this machine."""
    decoder_class, why = _load()
    if decoder_class is None:
        raise BackendUnavailable(f"decode backend 'torchcodec' is unavailable: {why}")


def torchcodec_reason(exc: BaseException) -> str:
    # torchcodec's messages start with the C++ function and source location.
    text = " ".join(str(exc).split())
    text = re.sub(r"^.*?\.cpp:\d+,\s*", "", text)
    return text.split(" This should never happen")[0][:300]


class TorchCodecReader:
    """One decoder thread, frames as uint8 (K, H, W, 3) on the CPU; in-memory sources are decoded from bytes."""

    def __init__(self, source: VideoSource) -> None:
        require()
        decoder_class = _load()[0]
        self.path = source.name
        try:
            self._decoder = decoder_class(source.path if source.path is not None else source.data,
                                          seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
            meta = self._decoder.metadata
            self.num_frames = int(meta.num_frames or 0)
            self.fps = float(meta.average_fps or 0.0)
        except Exception as exc:  # noqa: BLE001 - any failure to open is a property of the file...
            if "Could not load libtorchcodec" in str(exc):  # ...but the library's own: a setup problem
                raise BackendUnavailable(f"decode backend 'torchcodec' is unavailable: {ffmpeg_reason(str(exc))}") \
                    from None
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
