"""Encode small real video files for tests, and decode them the slow, obviously-correct way.

Other test modules import this (pytest puts ``tests/data`` on ``sys.path``, so ``from videos import ...``).
Lossy codecs change pixels, so tests never compare against the frames we fed the encoder; they compare
against ``reference_decode`` of the same file: a plain forward PyAV decode with no seeking, which is the
definition of "frame i" throughout the package.
"""
from __future__ import annotations

import fractions
import random
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np
import torch
from PIL import Image

# container format, encoder, file suffix
CODECS: dict[str, tuple[str, str, str]] = {
    "h264": ("mp4", "libx264", ".mp4"),
    "vp9": ("webm", "libvpx-vp9", ".webm"),
    "mpeg4": ("avi", "mpeg4", ".avi"),
    "mpeg4_mp4": ("mp4", "mpeg4", ".mp4"),
    "h264_ts": ("mpegts", "libx264", ".ts"),
    "mpeg2_ps": ("mpeg", "mpeg2video", ".mpg"),
    "ffv1": ("matroska", "ffv1", ".mkv"),
}

# The session fixtures' good videos (tests/data/conftest.py): name -> make_video keyword arguments.
# Small (64x48) so the whole data suite stays fast.
GOOD_VIDEOS: dict[str, dict] = {
    "h264": dict(codec="h264", num_frames=48, bframes=2, gop=12),
    "h264_faststart": dict(codec="h264", num_frames=40, bframes=0, gop=8, faststart=True),
    "vp9": dict(codec="vp9", num_frames=40, gop=10),
    "avi_bframes": dict(codec="mpeg4", num_frames=48, bframes=2, gop=12),
    "mpeg_ps": dict(codec="mpeg2_ps", num_frames=48, bframes=2, gop=12),
    "mp4_mpeg4_bframes": dict(codec="mpeg4_mp4", num_frames=40, bframes=2, gop=10),
    "mpeg_ts": dict(codec="h264_ts", num_frames=40, bframes=2, gop=10),
    "vfr": dict(codec="h264", num_frames=40, bframes=2, gop=10, vfr=True),
    "gray": dict(codec="h264", num_frames=24, pix_fmt="gray", gop=8),
    "short10": dict(codec="h264", num_frames=10, gop=4, bframes=1),
}


def source_frames(num_frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3): a moving gradient plus a bright square whose position encodes the index.

    Every frame differs clearly from its neighbours even after lossy coding, so a decoder returning the
    wrong frame cannot match the reference by accident.
    """
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    side = max(4, min(width, height) // 4)
    for i in range(num_frames):
        frames[i, ..., 0] = (x * 3 + 11 * i + seed * 17) % 256
        frames[i, ..., 1] = (y * 4 + 5 * i) % 256
        frames[i, ..., 2] = (x + y + 29 * i) % 256
        cx = (i * 7) % (width - side)
        cy = (i * 3) % (height - side)
        frames[i, cy:cy + side, cx:cx + side] = 255
    return frames


def make_video(
    path: str | Path,
    codec: str = "h264",
    num_frames: int = 30,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    bframes: int = 0,
    pix_fmt: str = "yuv420p",
    vfr: bool = False,
    gop: int = 12,
    faststart: bool = False,
    seed: int = 0,
    frames: Iterable[np.ndarray] | None = None,
) -> Path:
    """Encode ``source_frames(num_frames, size, seed)`` (or ``frames``, RGB of ``size``) into ``path``.

    ``codec`` is a key of CODECS; the container follows from it. ``vfr`` gives the frames irregular
    durations (1, 2 or 3 ticks of 1/fps) so that timestamps are not a multiple of a fixed step.
    ``faststart`` moves the MP4 index to the front, so a truncated copy still claims all frames.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown test codec {codec!r}; one of {sorted(CODECS)}")
    fmt, encoder, _ = CODECS[codec]
    path = Path(path)
    if frames is None:
        frames = source_frames(num_frames, size, seed)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=fmt, options=container_options) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        ctx = stream.codec_context
        ctx.gop_size = gop
        ctx.max_b_frames = bframes
        ctx.thread_count = 1
        if encoder == "libx264":
            # Pin the encoder so that the files (and thus any test failure) reproduce across machines.
            ctx.options = {"preset": "veryfast", "bf": str(bframes), "threads": "1"}
        if encoder == "libvpx-vp9":
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        tick = fractions.Fraction(1, fps)
        if vfr:
            ctx.time_base = fractions.Fraction(1, fps * 3)
            tick = ctx.time_base
        pts = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts = pts
            frame.time_base = tick
            pts += (1, 2, 3, 2, 1)[i % 5] if vfr else 1
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def reference_decode(path: str | Path) -> np.ndarray:
    """uint8 (N, H, W, 3): every presented frame in order, by one forward decode without seeking."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames)


def make_truncated(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """Copy the first ``keep_fraction`` of the bytes of ``src``: a download that stopped half way."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def make_zero_bytes(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_file(path: str | Path) -> Path:
    """A text file under a video name (a saved HTML error page is the usual real-world case)."""
    path = Path(path)
    path.write_text("<html><body>404 Not Found</body></html>\n" * 20)
    return path


def make_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A Matroska file holding one PCM audio stream and no video stream."""
    path = Path(path)
    samples = int(seconds * rate)
    tone = (np.sin(np.arange(samples) * 0.05) * 8000).astype(np.int16)[None, :]
    with av.open(str(path), mode="w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_frame_folder(
    dirpath: str | Path,
    num_frames: int = 12,
    size: tuple[int, int] = (64, 48),
    template: str = "img_{:05d}.jpg",
    start: int = 1,
    grayscale: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``source_frames`` as JPEG files named ``template.format(start + i)``."""
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(source_frames(num_frames, size, seed)):
        image = Image.fromarray(rgb)
        if grayscale:
            image = image.convert("L")
        image.save(dirpath / template.format(start + i), quality=90)
    return dirpath


def reference_folder_frames(
    dirpath: str | Path, indices: Sequence[int], template: str = "img_{:05d}.jpg", start: int = 1
) -> np.ndarray:
    """Frames of a folder read one by one with PIL, converted to RGB."""
    dirpath = Path(dirpath)
    return np.stack([np.asarray(Image.open(dirpath / template.format(start + i)).convert("RGB")) for i in indices])



# decord is only trusted in containers with timestamps and keyframe indexes
DECORD_TRUSTED = ["h264", "h264_faststart", "vp9", "vfr", "gray", "short10"]
# torchcodec's exact mode in MP4 / Matroska / WebM, every codec there
TORCHCODEC_TRUSTED = DECORD_TRUSTED + ["mp4_mpeg4_bframes"]
ALL_GOOD = list(GOOD_VIDEOS) + ["avi_named_mp4"]
# (file, backend) pairs that must be frame-exact: PyAV and auto everywhere, the others where "auto" uses them
EXACT = ([(n, b) for n in ALL_GOOD for b in ("auto", "pyav")] + [(n, "decord") for n in DECORD_TRUSTED]
         + [(n, "torchcodec") for n in TORCHCODEC_TRUSTED])


def index_sets(num_frames: int, seed: int) -> list[list[int]]:
    """Frame index lists that exercise a reader: ends, every frame, descending, repeats, random clips."""
    rng = random.Random(seed)
    sets = [
        [0], [num_frames - 1], list(range(num_frames)),
        list(range(num_frames - 1, -1, -3)),                   # descending
        [5 % num_frames, 5 % num_frames, 1, 1, 0],              # repeats, unsorted
    ]
    for _ in range(6):
        start = rng.randrange(num_frames)
        sets.append([min(start + 2 * k, num_frames - 1) for k in range(8)])  # a clip, last frame repeated
        sets.append([rng.randrange(num_frames) for _ in range(5)])
    return sets


def assert_frames(got: torch.Tensor, ref: np.ndarray, indices: list[int]) -> None:
    """``got`` holds exactly the reference frames ``indices``, bit for bit."""
    assert got.dtype == torch.uint8 and tuple(got.shape) == (len(indices),) + ref.shape[1:]
    for row, index in enumerate(indices):
        assert np.array_equal(got[row].numpy(), ref[index]), f"row {row} is not frame {index}"
