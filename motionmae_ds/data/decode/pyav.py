"""PyAV: seeks by presentation timestamps in seekable containers, decodes forward elsewhere."""
from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .common import (
    DecodeCounter,
    VideoDecodeError,
    VideoSource,
    check_indices,
    check_range,
    count_until_failure,
    frame_buffer,
    one_line,
    pick,
)

if TYPE_CHECKING:
    import torch

# Containers with per-frame timestamps and a keyframe index: PyAV seeks there (verified by pts);
# elsewhere (AVI, MPEG-PS/TS, ...) it decodes forward from the start.
SEEKABLE_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm")
# Codecs whose decoder drops a non-reference picture it is told to skip (FFmpeg's skip_frame=NONREF, checked
# per slice when the packet is sent) without changing any other picture: in the seek path every packet whose
# frame is not wanted is sent with NONREF, so unwanted B-frames that nothing predicts from are never decoded.
SKIP_NONREF_CODECS = ("h264",)


def open_av(source: VideoSource):
    import av

    # Process-wide: in a data worker, failures must surface as exceptions, not as stderr noise.
    av.logging.set_level(av.logging.PANIC)
    try:
        return av.open(source.open())
    except Exception as exc:  # noqa: BLE001 - any failure to open is a property of the file
        raise VideoDecodeError(source.name, f"cannot open: {one_line(exc)}") from None


def is_seekable_format(container) -> bool:
    return any(name in SEEKABLE_FORMATS for name in container.format.name.split(","))


class PyAVReader:
    """``counter`` records every frame the decoder produced (by index) and every RGB conversion."""

    def __init__(self, source: VideoSource, seek: bool | None = None, container=None) -> None:
        self.source, self.path = source, source.name
        self.counter = DecodeCounter()
        self._reformatter = None
        self._next_index: int | None = None  # index of the frame the forward decode yields next
        self._skip_pts: set | None = None  # seek path: pts of the wanted frames (see _decode_wanted)
        self._container = container if container is not None else open_av(source)
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(self.path, "no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_count = 1
            self.header_frames = max(0, self._stream.frames or 0)
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            if seek is None:
                seek = is_seekable_format(self._container)
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
                raise VideoDecodeError(self.path, f"cannot read packets: {one_line(exc)}") from None
        if not pts:
            raise VideoDecodeError(self.path, "video stream has no frames")
        self.num_frames = len(pts)
        # Frames are matched to indices by pts: missing or repeated timestamps make that ambiguous.
        self._seekable = (seek and None not in pts and len(set(pts)) == len(pts) and bool(keys)
                          and all(k[1] is not None for k in keys))
        if self._seekable:
            self._pts = sorted(pts)
            self._keys = sorted(keys)

    def rewind(self) -> None:
        # Reopen rather than seek to 0: in program streams and AVI a seek to 0 is not guaranteed to land
        # on the first frame, and the forward decode is what defines the frame order.
        self._container.close()
        self._container = open_av(self.source)
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = 1
        self._frames = self._container.decode(self._stream)
        self._next_index = 0

    def forward_frames(self):
        """Every frame from the first, in presentation order (after ``rewind``)."""
        return self._frames

    def _rgb(self, frame) -> np.ndarray:
        """The frame converted to RGB, (H, W, 3): a view of swscale's output, copied once by ``pick``."""
        # One reformatter per reader keeps its swscale context: ``frame.to_ndarray(format=...)`` builds a new
        # one per frame, which costs more than the conversion (same pixels: tests/data/test_decode.py).
        # threads=1: swscale then starts no slice threads; workers are the parallelism here, as for the decoder's
        # thread_count = 1 (and a context with threads that a forked child inherited would hang it when freed:
        # loader workers start from a forkserver, data/loader.py).
        self.counter.converted += 1
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24", threads=1)
        plane = rgb.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(rgb.height, plane.line_size)
        return rows[:, : rgb.width * 3].reshape(rgb.height, rgb.width, 3)

    def _decode(self, indices: Sequence[int]) -> tuple[list[int], dict]:
        indices = check_indices(indices)
        check_range(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        frames = self._get_by_seeking(wanted) if self._seekable else None
        if frames is None:
            frames = self._get_forward(wanted)
        return indices, frames

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        # the decoded frames are kept as the decoder made them; each is converted once, into the output
        indices, frames = self._decode(indices)
        return pick(frames, indices, self._rgb)

    def get_yuv(self, indices: Sequence[int]) -> tuple[torch.Tensor, str]:
        """The frames at ``indices`` as the decoder made them, when that is 8-bit 4:2:0 of a colour matrix the device
        converts (``YUV_MATRICES``): uint8 (K, H * 3 / 2, W), I420 (the Y plane, then U and V, each H / 2 x W / 2,
        in rows of W), and the matrix; no conversion to RGB here (``finishing.finish_clips`` does it on the device).
        Other frames (other formats, odd sizes, full range, other matrices) come as ``get`` gives them: (K, H, W, 3),
        "rgb"."""
        indices, frames = self._decode(indices)
        first = frames[indices[0]]
        matrix = yuv_matrix(first)
        if matrix is None:
            return pick(frames, indices, self._rgb), "rgb"
        return _pick_i420(frames, indices), matrix

    def decode_only(self, indices: Sequence[int]) -> int:
        """Decode the frames at ``indices`` exactly as ``get`` does (same seeks, same skipped pictures) and convert
        nothing: the decoder's own cost, the limit a loader worker can reach (bench/data_throughput.py)."""
        return len(self._decode(indices)[1])

    def _get_forward(self, wanted: list[int]) -> dict:
        # Test views usually come in ascending order: go on from where the last call stopped if possible.
        if self._next_index is None or wanted[0] < self._next_index:
            self.rewind()
        need, last, out, decoded = set(wanted), wanted[-1], {}, self._next_index
        self._next_index = None  # unknown until this call returns normally
        try:
            for frame in self._frames:
                if frame.is_corrupt:
                    raise VideoDecodeError(
                        self.path, f"frame {last} requested but frame {decoded} is damaged (corrupt data); "
                        f"{decoded} frames decode cleanly (the container lists {self.num_frames})"
                    )
                self.counter.decoded[decoded] += 1
                if decoded in need:
                    out[decoded] = frame
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
                f"(the container lists {self.num_frames}): {one_line(exc)}",
            ) from None
        raise VideoDecodeError(
            self.path,
            f"frame {last} requested but only {decoded} frames decode (the container lists {self.num_frames})",
        )

    def _get_by_seeking(self, wanted: list[int]) -> dict | None:
        """Seek to the keyframe before each run of wanted frames and decode forward, matching by pts.

        Returns None when the decoder does not present the timestamps the index promised; the caller
        then decodes forward from the start, which is the definition of the frame order.
        """
        out: dict = {}
        targets = {self._pts[i]: i for i in wanted}
        self._skip_pts = set(targets) if self._stream.codec_context.name in SKIP_NONREF_CODECS else None
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
                    first = self._seek(key_pts, key_dts, target)
                    if first is None:
                        return None
                    frames, position = itertools.chain([first], self._frames), None
                else:
                    frames = self._frames
                for frame in frames:
                    if frame.pts is None or frame.is_corrupt or (position is None and frame.pts > target):
                        return None  # damaged data, or the seek landed after the frame we want
                    position = frame.pts
                    self.counter.decoded[bisect.bisect_left(self._pts, position)] += 1
                    if position in targets and targets[position] not in out:
                        out[targets[position]] = frame
                    if position >= target:
                        break
                if i not in out:
                    return None
        except Exception:  # noqa: BLE001 - the forward decode reports what is wrong with the file
            return None
        return out

    def _seek(self, key_pts: int, key_dts: int, target: int):
        """Seek to a keyframe; the first frame decoded there, or None when every try lands after ``target``.

        By the keyframe's pts first: in MP4 with B-frames (an edit list shifts the timestamps) a seek to its
        dts lands one keyframe earlier and decodes a whole GOP for nothing. The dts is the fallback.
        """
        for timestamp in dict.fromkeys((key_pts, key_dts)):
            self._container.seek(timestamp, stream=self._stream, backward=True, any_frame=False)
            self._frames = self._decode_wanted()
            first = next(self._frames, None)
            if first is not None and first.pts is not None and first.pts <= target:
                return first
            if first is not None and first.pts is not None:
                self.counter.decoded[bisect.bisect_left(self._pts, first.pts)] += 1
        return None

    def _decode_wanted(self):
        """Frames decoded from the current demux position; with ``_skip_pts`` set (the seek path of a codec in
        SKIP_NONREF_CODECS), packets presenting no wanted frame go in with skip_frame=NONREF."""
        ctx, wanted = self._stream.codec_context, self._skip_pts
        for packet in self._container.demux(self._stream):
            if wanted is not None:
                ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
            yield from packet.decode()

    def close(self) -> None:
        self._reformatter = None
        self._container.close()


# the colour matrices finishing.yuv_to_rgb implements (limited range), by PyAV's colorspace value: what swscale
# converts with, where the frame names no matrix too (FFmpeg's default, BT.601)
YUV_MATRICES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}


def yuv_matrix(frame) -> str | None:
    """The matrix name of a frame the device can convert (yuv420p, even size, limited range), else None."""
    if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2 or int(frame.color_range) == 2:
        return None
    return YUV_MATRICES.get(int(frame.colorspace))


def _pick_i420(frames: dict, indices: list[int]) -> torch.Tensor:
    """uint8 (K, H * 3 / 2, W): each frame's three planes without their row padding, in I420 order, copied once
    into a ``frame_buffer`` (shared memory in a worker)."""
    h, w = frames[indices[0]].height, frames[indices[0]].width
    out = frame_buffer((len(indices), h * 3 // 2, w))
    flat = out.numpy().reshape(len(indices), -1)
    sizes = ((h, w), (h // 2, w // 2), (h // 2, w // 2))
    row: dict[int, int] = {}
    for k, i in enumerate(indices):
        if i in row:  # a repeated index (short videos)
            flat[k] = flat[row[i]]
            continue
        row[i], at = k, 0
        for plane, (ph, pw) in zip(frames[i].planes, sizes):
            rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ph, :pw]
            flat[k, at:at + ph * pw].reshape(ph, pw)[:] = rows
            at += ph * pw
    return out


def probe_frames(source: VideoSource) -> tuple[int, int, float]:
    """(frames that decode before the first corrupt one, frames the container lists, fps)."""
    reader = PyAVReader(source, seek=False)
    listed = max(reader.header_frames, reader.num_frames)

    def intact():
        reader.rewind()
        for frame in reader.forward_frames():
            if frame.is_corrupt:  # concealed damage: this frame and those predicted from it are not real
                return
            yield frame

    try:
        count = count_until_failure(intact(), source.name)
    finally:
        reader.close()
    if count == 0:
        raise VideoDecodeError(source.name, "no frame decodes")
    return count, listed, reader.fps
