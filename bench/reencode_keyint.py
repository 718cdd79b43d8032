"""Decode time of random pretraining clips vs file size, for re-encodings at several keyints.

    python bench/reencode_keyint.py [--keyints 8 16 32 64 250] [--clips 24] [--repeats 3]

The bench videos of data_throughput.py (640x360, 300 frames, x264 keyint 250) re-encoded by
motionmae_ds.data.reencode at short side 320 (568x320); each row decodes the same clip indices (16 frames at
stride 4 from a random start, one thread, ``VideoReader(..., "auto")``) and gives the median over repeats of
this process's CPU time per clip (so that other jobs on the machine do not inflate it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from data_throughput import make_bench_video

from motionmae_ds.data.decode import VideoReader
from motionmae_ds.data.reencode import reencode_file
from motionmae_ds.data.sampling import make_generator, train_clip_indices


def clip_ms(paths: list[str], clips: int, start: int) -> float:
    t0 = time.process_time()
    for i in range(start, start + clips):
        with VideoReader(paths[i % len(paths)], "auto") as reader:
            reader.get(train_clip_indices(reader.num_frames, 16, 4, make_generator(0, 0, i, 0)))
    return (time.process_time() - t0) / clips * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keyints", type=int, nargs="+", default=[8, 16, 32, 64, 250])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/motionmae_bench_videos")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(make_bench_video(out / f"bench_640x360_{k}.mp4", 640, 360, 300, k)) for k in range(2)]
    cases = {"original 640x360, keyint 250": sources}
    for keyint in args.keyints:
        paths = []
        for k, src in enumerate(sources):
            dst = out / f"reencoded_320_k{keyint}_{k}.mp4"
            if not dst.exists():
                reencode_file(src, str(dst), short_side=320, keyint=keyint)
            paths.append(str(dst))
        cases[f"568x320, keyint {keyint}"] = paths
    results = {name: [] for name in cases}
    for r in range(args.repeats):
        for name, paths in cases.items():
            results[name].append(clip_ms(paths, args.clips, 1000 * (r + 1)))
    print(f"{os.cpu_count()} cores, 1 thread; {args.repeats} repeats x {args.clips} clips, median ms per clip")
    print("| file | MB per 10 s | ms per clip (decode) |")
    print("|---|---|---|")
    for name, paths in cases.items():
        size = statistics.mean(os.path.getsize(p) for p in paths) / 1e6
        print(f"| {name} | {size:.2f} | {statistics.median(results[name]):.1f} |")


if __name__ == "__main__":
    main()
