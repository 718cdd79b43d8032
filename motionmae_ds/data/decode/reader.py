"""Frame-accurate video decoding behind one interface (decord or PyAV), plus JPEG frame folders.

"Frame i" always means the i-th frame a plain forward decode presents (for VFR files too). Backends may
seek to get there faster only where seeking has been shown to land on the same frames; elsewhere they
decode forward from the start. Every failure to deliver exactly the requested frames raises
VideoDecodeError; nothing returns fewer frames or neighbouring frames silently.

Readers are opened inside the call (never shared across DataLoader workers) with one decoder thread:
the parallelism is the DataLoader's workers.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "decord", "pyav")

# Containers with per-frame timestamps and a keyframe index: PyAV seeks there (verified by pts);
# elsewhere (AVI, MPEG-PS/TS, ...) it decodes forward from the start.
SEEKABLE_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm")
# Codecs whose decord seeks land on the right frames in SEEKABLE_FORMATS (tests/data/test_decode.py).
# decord returns neighbouring frames after seeks in AVI, MPEG-PS/TS, and for MPEG-4 Part 2 with
# B-frames even inside MP4/MKV: "auto" sends all of those to PyAV.
DECORD_CODECS = ("h264", "vp9")
# decord hands back 4-channel frames for some small frame sizes and its copy into the RGB batch fails
# ("DECORDArrayCopyFromTo: The size must exactly match", dmlc/decord#336: 96x96 H.264 here, 72x72 there).
# "auto" falls back to PyAV for such a file and remembers the stream's (codec, width, height, pixel format)
# for the rest of the process, so the next file of that kind skips the failing decord attempt.
_DECORD_COPY_FAILURE = "DECORDArrayCopyFromTo"
_decord_unfit: set[tuple] = set()


class VideoDecodeError(Exception):
    """A video that cannot deliver the requested frames. ``str(e)`` is one line: ``path: reason``."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        # DataLoader workers re-raise exceptions as ``type(e)(message)``: accept a single argument too.
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) if reason is not None else ""
        super().__init__(f"{self.path}: {self.reason}" if reason is not None else self.path)

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def _check_indices(indices: Sequence[int]) -> list[int]:
    out = [int(i) for i in indices]
    if not out:
        raise ValueError("indices must not be empty")
    if min(out) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(out)}")
    return out


def _pick(frames: dict[int, np.ndarray], indices: list[int]) -> "torch.Tensor":
    # torch is imported on first use so that scanning tools (prepare_data) start without it.
    import torch

    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class _PyAVReader:
    """PyAV: seeks by presentation timestamps in seekable containers, decodes forward elsewhere."""

    def __init__(self, path: str, seek: bool | None = None, container=None) -> None:
        self.path = path
        self._next_index: int | None = None  # index of the frame the forward decode yields next
        self._container = container if container is not None else _open_av(path)
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_count = 1
            self.header_frames = max(0, self._stream.frames or 0)
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            if seek is None:
                seek = any(name in SEEKABLE_FORMATS for name in self._container.format.name.split(","))
            self._build_index(seek)
        except BaseException:
            self._container.close()
            raise

    def _build_index(self, seek: bool) -> None:
        """Demux every packet once (no decoding): frame count, presentation timestamps and keyframes."""
        pts, keys = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append((packet.pts, packet.dts))
        except Exception as exc:  # noqa: BLE001 - a demux error after some packets is a truncated file
            if not pts:
                raise VideoDecodeError(self.path, f"cannot read packets: {_one_line(exc)}") from None
        if not pts:
            raise VideoDecodeError(self.path, "video stream has no frames")
        self.num_frames = len(pts)
        # Frames are matched to indices by pts: missing or repeated timestamps make that ambiguous.
        self._seekable = (seek and None not in pts and len(set(pts)) == len(pts) and bool(keys)
                          and all(k[1] is not None for k in keys))
        if self._seekable:
            self._pts = sorted(pts)
            self._keys = sorted(keys)

    def _rewind(self) -> None:
        # Reopen rather than seek to 0: in program streams and AVI a seek to 0 is not guaranteed to land
        # on the first frame, and the forward decode is what defines the frame order.
        self._container.close()
        self._container = _open_av(self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = 1
        self._frames = self._container.decode(self._stream)
        self._next_index = 0

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(indices)
        if max(indices) >= self.num_frames:
            raise VideoDecodeError(
                self.path, f"frame {max(indices)} requested but the video has {self.num_frames} frames"
            )
        wanted = sorted(set(indices))
        frames = self._get_by_seeking(wanted) if self._seekable else None
        if frames is None:
            frames = self._get_forward(wanted)
        return _pick(frames, indices)

    def _get_forward(self, wanted: list[int]) -> dict[int, np.ndarray]:
        # Test views usually come in ascending order: go on from where the last call stopped if possible.
        if self._next_index is None or wanted[0] < self._next_index:
            self._rewind()
        need, last, out, decoded = set(wanted), wanted[-1], {}, self._next_index
        self._next_index = None  # unknown until this call returns normally
        try:
            for frame in self._frames:
                if frame.is_corrupt:
                    raise VideoDecodeError(
                        self.path, f"frame {last} requested but frame {decoded} is damaged (corrupt data); "
                        f"{decoded} frames decode cleanly (the container lists {self.num_frames})"
                    )
                if decoded in need:
                    out[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
                if decoded > last:
                    self._next_index = decoded
                    return out
        except VideoDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(
                self.path,
                f"frame {last} requested but decoding fails after frame {decoded - 1} "
                f"(the container lists {self.num_frames}): {_one_line(exc)}",
            ) from None
        raise VideoDecodeError(
            self.path, f"frame {last} requested but only {decoded} frames decode (the container lists {self.num_frames})"
        )

    def _get_by_seeking(self, wanted: list[int]) -> dict[int, np.ndarray] | None:
        """Seek to the keyframe before each run of wanted frames and decode forward, matching by pts.

        Returns None when the decoder does not present the timestamps the index promised; the caller
        then decodes forward from the start, which is the definition of the frame order.
        """
        out: dict[int, np.ndarray] = {}
        targets = {self._pts[i]: i for i in wanted}
        position = None  # pts of the last frame decoded without a seek since
        try:
            for i in wanted:
                if i in out:
                    continue
                target = self._pts[i]
                key = bisect.bisect_right(self._keys, (target, float("inf"))) - 1
                if key < 0:
                    return None
                key_pts, key_dts = self._keys[key]
                # Keep decoding forward when the next wanted frame lies inside the GOP we are already in.
                if position is None or position >= target or key_pts > position:
                    self._next_index = None  # the forward position is lost
                    self._container.seek(key_dts, stream=self._stream, backward=True, any_frame=False)
                    self._frames = self._container.decode(self._stream)
                    position = None
                for frame in self._frames:
                    if frame.pts is None or frame.is_corrupt or (position is None and frame.pts > target):
                        return None  # damaged data, or the seek landed after the frame we want
                    position = frame.pts
                    if position in targets and targets[position] not in out:
                        out[targets[position]] = frame.to_ndarray(format="rgb24")
                    if position >= target:
                        break
                if i not in out:
                    return None
        except Exception:  # noqa: BLE001 - the forward decode reports what is wrong with the file
            return None
        return out

    def close(self) -> None:
        self._container.close()


class _DecordReader:
    """decord (the maintained ``decord2`` fork): fast seeks, trusted only in SEEKABLE containers."""

    def __init__(self, path: str) -> None:
        import decord

        self.path = path
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(path, f"cannot open: {_decord_reason(exc)}") from None
        if self.num_frames <= 0:
            raise VideoDecodeError(path, "video stream has no frames")

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(indices)
        if max(indices) >= self.num_frames:
            raise VideoDecodeError(
                self.path, f"frame {max(indices)} requested but the video has {self.num_frames} frames"
            )
        wanted = sorted(set(indices))
        try:
            batch = self._reader.get_batch(wanted).asnumpy()
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(self.path, f"decoding failed: {_decord_reason(exc)}") from None
        if batch.shape[0] != len(wanted):
            raise VideoDecodeError(self.path, f"decoder returned {batch.shape[0]} of {len(wanted)} frames")
        return _pick(dict(zip(wanted, batch)), indices)

    def close(self) -> None:
        self._reader = None


def _decord_reason(exc: BaseException) -> str:
    # decord's messages carry a C++ stack location before the useful part.
    text = " ".join(str(exc).split())
    marker = "Check failed:"
    return text[text.rfind(marker):][:300] if marker in text else text[:300]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; one of {', '.join(BACKENDS)}")


def _open_av(path: str):
    import av

    # Process-wide: in a data worker, failures must surface as exceptions, not as stderr noise.
    av.logging.set_level(av.logging.PANIC)
    try:
        return av.open(path)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a property of the file
        raise VideoDecodeError(path, f"cannot open: {_one_line(exc)}") from None


def _decord_is_exact(container) -> bool:
    """Judged from the container's header (format and codec), not from the file name."""
    if not container.streams.video:
        return False
    formats = container.format.name.split(",")
    codec = container.streams.video[0].codec_context.name
    return any(name in SEEKABLE_FORMATS for name in formats) and codec in DECORD_CODECS


def _stream_signature(container) -> tuple:
    ctx = container.streams.video[0].codec_context
    return (ctx.name, ctx.width, ctx.height, str(ctx.pix_fmt))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


class VideoReader:
    """One open video; read several index sets (test views) without reopening.

    ``num_frames`` is what the container lists (exact for intact files, found without decoding);
    ``get`` raises VideoDecodeError when a requested frame lies beyond what actually decodes.
    "auto" uses decord where its seeks are exact (DECORD_CODECS in SEEKABLE_FORMATS), PyAV elsewhere;
    a decord failure is retried with PyAV, whose diagnosis is the one reported. ``backend`` tells which
    one is reading.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto") -> None:
        self.path = str(path)
        _check_backend(backend)
        _check_file(self.path)
        self._auto = backend == "auto"
        self.backend = backend
        self._signature: tuple | None = None
        self._impl = self._open()
        self.num_frames: int = self._impl.num_frames
        self.fps: float = self._impl.fps

    def _open(self):
        if self.backend == "decord":
            return _DecordReader(self.path)
        if self.backend == "pyav":
            return _PyAVReader(self.path)
        # auto: PyAV's header parse (a few ms) tells whether decord can be trusted with this file
        container = _open_av(self.path)
        if _decord_is_exact(container):
            self._signature = _stream_signature(container)
        if self._signature is not None and self._signature not in _decord_unfit:
            container.close()
            self.backend = "decord"
            try:
                return _DecordReader(self.path)
            except VideoDecodeError:
                container = None
        self.backend = "pyav"
        return _PyAVReader(self.path, container=container)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (K, H, W, 3): the frames at ``indices`` (repeats and any order allowed)."""
        try:
            return self._impl.get(indices)
        except VideoDecodeError as exc:
            if not (self._auto and self.backend == "decord"):
                raise
            if _DECORD_COPY_FAILURE in exc.reason and self._signature is not None:
                _decord_unfit.add(self._signature)
        self._impl.close()
        self.backend = "pyav"
        self._impl = _PyAVReader(self.path)
        return self._impl.get(indices)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_frames(path: str | os.PathLike, indices: Sequence[int], backend: str = "auto") -> torch.Tensor:
    """uint8 (len(indices), H, W, 3): exactly the frames at ``indices``; raises VideoDecodeError."""
    with VideoReader(path, backend) as reader:
        return reader.get(indices)


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int      # frames a forward decode actually delivers
    listed_frames: int   # what the container claims (header count, else demuxed packets)
    fps: float

    @property
    def truncated(self) -> bool:
        return self.num_frames < self.listed_frames


def probe_video(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Decode the whole file (no RGB conversion with PyAV) and compare with what the container claims.

    ``num_frames`` ends before the first frame PyAV flags as corrupt (decord cannot tell).

    "auto" probes with PyAV: it skips the RGB conversion and names the problem when nothing decodes.
    """
    path = str(path)
    _check_backend(backend)
    _check_file(path)
    if backend == "decord":
        return _probe_decord(path)
    return _probe_pyav(path)


def count_frames(path: str | os.PathLike, backend: str = "auto") -> int:
    """The number of frames a forward decode actually delivers (not a header guess)."""
    return probe_video(path, backend).num_frames


def _probe_pyav(path: str) -> VideoInfo:
    reader = _PyAVReader(path, seek=False)
    listed = max(reader.header_frames, reader.num_frames)
    count = 0
    try:
        reader._rewind()
        for frame in reader._frames:
            if frame.is_corrupt:  # concealed damage: this frame and those predicted from it are not real
                break
            count += 1
    except Exception as exc:  # noqa: BLE001 - a truncated tail: the frames before it are real
        if count == 0:
            raise VideoDecodeError(path, f"no frame decodes: {_one_line(exc)}") from None
    finally:
        reader.close()
    if count == 0:
        raise VideoDecodeError(path, "no frame decodes")
    return VideoInfo(count, listed, reader.fps)


def _probe_decord(path: str) -> VideoInfo:
    reader = _DecordReader(path)
    count = 0
    try:
        for _ in range(reader.num_frames):
            reader._reader.next()
            count += 1
    except Exception as exc:  # noqa: BLE001
        if count == 0:
            raise VideoDecodeError(path, f"no frame decodes: {_decord_reason(exc)}") from None
    finally:
        reader.close()
    return VideoInfo(count, reader.num_frames, reader.fps)


def read_frame_folder(
    dirpath: str | os.PathLike,
    indices: Sequence[int],
    template: str = "img_{:05d}.jpg",
    start: int = 1,
) -> torch.Tensor:
    """uint8 (K, H, W, 3) from image files named ``template.format(start + index)``."""
    from PIL import Image

    indices = _check_indices(indices)
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
            raise VideoDecodeError(dirpath, f"frame {i} ({os.path.basename(name)}) unreadable: {_one_line(exc)}") from None
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(dirpath, f"frames differ in size: {sorted(shapes)}")
    return _pick(frames, indices)


def count_folder_frames(dirpath: str | os.PathLike, template: str = "img_{:05d}.jpg", start: int = 1) -> int:
    """Consecutive readable images ``template.format(start), template.format(start + 1), ...``.

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
