"""Milliseconds per pretraining read for each decode backend, on every kind of file the tests make.

    python bench/decode_backends.py [--size 320x240] [--frames 300] [--reads 12] [--repeats 3]

Files: ``bench_frames`` (data_throughput.py's textured, moving content) encoded by tests/data/videos.py's
``make_video`` as each kind of tests/data/videos.GOOD_VIDEOS (B-frame AVI, MPEG-PS, MPEG-TS, MPEG-4 in MP4,
VFR, grayscale, long- and short-GOP H.264 MP4, VP9), ``--frames`` frames at ``--size``.
A read is what one pretraining item asks of its reader: open the file, then the frames of one clip
(16 frames at stride 4 from a random start) or of 4 such clips at once (``num_repeats=4``: the union of
their indices in one call). The same starts for every backend; backends alternate per read; a cell is the
median over ``--repeats`` runs of ``--reads`` reads. A backend that returns other frames than a forward
PyAV decode on any read of a file is shown as "wrong", one that raises as "error"; "auto" is the choice
decode/reader.py makes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine
from data_throughput import bench_frames

from motionmae_ds.data.decode import BACKENDS, VideoDecodeError, VideoReader
from motionmae_ds.data.decode import torchcodec as torchcodec_backend
from motionmae_ds.data.sampling import make_generator, train_clip_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
import videos  # noqa: E402 - the test suite's encoder settings per kind of file

CLIP, STRIDE = 16, 4
KINDS = {  # name -> make_video arguments (codec, GOP, B-frames); GOPs as the kinds usually come
    "h264 MP4, long GOP (250)": dict(codec="h264", bframes=3, gop=250),
    "h264 MP4, short GOP (16)": dict(codec="h264", bframes=2, gop=16),
    "h264 MP4, VFR": dict(codec="h264", bframes=2, gop=50, vfr=True),
    "h264 MP4, grayscale": dict(codec="h264", bframes=2, gop=50, pix_fmt="gray"),
    "VP9 WebM": dict(codec="vp9", gop=60),
    "MPEG-4 MP4, B-frames": dict(codec="mpeg4_mp4", bframes=2, gop=50),
    "MPEG-4 AVI, B-frames": dict(codec="mpeg4", bframes=2, gop=50),
    "MPEG-2 PS": dict(codec="mpeg2_ps", bframes=2, gop=15),
    "h264 MPEG-TS": dict(codec="h264_ts", bframes=2, gop=50),
}


def _reads(num_frames: int, repeats: int, count: int, seed: int) -> list[list[int]]:
    out = []
    for i in range(count):
        gen = make_generator(seed, 0, i, 0)
        clips = [train_clip_indices(num_frames, CLIP, STRIDE, gen) for _ in range(repeats)]
        out.append(sorted({k for clip in clips for k in clip}))
    return out


def _time_read(path: str, backend: str, indices: list[int], ref: np.ndarray) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        with VideoReader(path, backend) as reader:
            frames = reader.get(indices)
            chosen = reader.backend
    except VideoDecodeError:
        return time.perf_counter() - t0, "error"
    elapsed = time.perf_counter() - t0
    exact = all(np.array_equal(frames[row].numpy(), ref[i]) for row, i in enumerate(indices))
    return elapsed, chosen if exact else "wrong"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--reads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/motionmae_bench_kinds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in BACKENDS if b != "torchcodec" or torchcodec_backend.available()]
    rows = []
    for kind, spec in KINDS.items():
        suffix = videos.CODECS[spec["codec"]][2]
        slug = "".join(c if c.isalnum() else "_" for c in kind.lower())
        path = out / f"{slug}_{width}x{height}_{args.frames}{suffix}"
        if not path.exists():
            tmp = path.with_name("tmp_" + path.name)
            videos.make_video(tmp, num_frames=args.frames, size=(width, height), fps=30,
                              frames=bench_frames(width, height, args.frames, 0), **spec)
            os.replace(tmp, path)
        ref = videos.reference_decode(path)
        for repeats in (1, 4):
            reads = _reads(len(ref), repeats, args.reads, seed=repeats)
            times: dict[str, list[float]] = {b: [] for b in backends}
            verdict = {b: "" for b in backends}
            for run in range(args.repeats):
                total = {b: 0.0 for b in backends}
                for r, indices in enumerate(reads):
                    order = backends if (run + r) % 2 == 0 else backends[::-1]
                    for backend in order:
                        elapsed, status = _time_read(str(path), backend, indices, ref)
                        total[backend] += elapsed
                        if status in ("wrong", "error") or not verdict[backend]:
                            verdict[backend] = status
                for b in backends:
                    times[b].append(1000 * total[b] / len(reads))
            rows.append((kind, repeats, {b: (statistics.median(times[b]), verdict[b]) for b in backends}))
    print(f"machine: {machine(1)}; {args.size}, {args.frames} frames, {args.repeats} runs x {args.reads} reads")
    print("| file | clips per read | " + " | ".join(f"{b} ms" for b in backends) + " |")
    print("|---|---|" + "---|" * len(backends))
    for kind, repeats, cells in rows:
        text = []
        for b in backends:
            ms, status = cells[b]
            note = f" ({status})" if b == "auto" or status in ("wrong", "error") else ""
            text.append(f"{ms:.1f}{note}")
        print(f"| {kind} | {repeats} | " + " | ".join(text) + " |")


if __name__ == "__main__":
    main()
