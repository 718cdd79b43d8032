"""Clips/s of one data worker: ours, the decoder's own limit, and a VideoMAE-style loader, in one run.

    python bench/data_throughput.py [--repeats 5] [--clips 8] [--clock cpu] [--json PATH]
    python bench/data_throughput.py --list FILE [--root DIR] [--sample 16] [--target 900]

Every case takes 16 frames at stride 4 from random starts (the dataset's sampler and seeds, so all cases decode
the same frames), in this process with one thread (a DataLoader worker runs exactly this code), on H.264 MP4 files
made here at 320x240 and 640x360 (x264 defaults: keyint 250, B-frames) and on the same files re-encoded by
``prepare_data.py --reencode`` (short side 320, keyint 16, tune fastdecode):
- ours: what a worker does per item since #33: ``VideoClipDataset(mode="pretrain")[i]`` (open, seek, decode the
  union of the R clips' frames once, convert to RGB, draw boxes and flips) and ``collate_clips`` (the frames into
  the batch's shared buffer). Cropping, resizing, flipping and normalising run on the step's device
  (``data/finishing.py``), not here.
- decode_only: the same backend opening the same file and decoding the same frames with the same seeks, and
  nothing else (``VideoReader.decode_only``: no RGB conversion, no copy): the limit for that decoder.
- videomae_style: the way VideoMAE's pretraining loader works: ``decord.VideoReader(num_threads=1)``,
  ``get_batch(...).asnumpy()``, a PIL image per frame, multi-scale crop (scales 1, .875, .75, .66 of the shorter
  side, 13 fixed positions), PIL bilinear resize per frame, flip, stack, to float, per-frame normalise, and the
  tube mask drawn in the worker. One clip per item (num_repeats 1).
clips/s counts clips (an item with num_repeats=4 is 4 clips); the cases of one video and source are timed back to
back in each repeat, order rotating; medians. ``--json PATH`` writes ``{"results": [{"video", "source",
"num_repeats", "case", "clips_per_s"}, ...]}``.

``--list FILE`` times ours on a sample of your own videos (a list file as training reads it) and prints clips/s
per core and the workers per GPU a ``--target`` of clips/s per GPU needs (README: "Sizing the loader").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from common import machine

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.decode import VideoReader
from motionmae_ds.data.lists import VideoRecord, read_list
from motionmae_ds.data.loader import collate_clips
from motionmae_ds.data.sampling import make_generator, repeated_train_indices, train_clip_indices
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

NUM_FRAMES, STRIDE, SIZE = 16, 4, 224
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def bench_frames(width: int, height: int, frames: int, seed: int):
    """RGB frames of a panning texture with a moving blob: enough detail and motion that encoders work."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.kron(base, np.ones((8, 8, 1), np.uint8))[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(frames):
        frame = np.roll(texture, (i, 2 * i), axis=(0, 1)).copy()
        cx, cy = (width / 2 + width / 3 * np.sin(i / 15)), (height / 2 + height / 3 * np.cos(i / 20))
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 6) ** 2] = (255, 128, 0)
        yield frame


def make_bench_video(path: Path, width: int, height: int, frames: int, seed: int) -> Path:
    """``bench_frames`` as H.264 MP4 with x264's defaults (keyint 250, B-frames), crf 23."""
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(30, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i, frame in enumerate(bench_frames(width, height, frames, seed)):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


class VideoMAEStyleBaseline:
    """decord get_batch, then per-frame PIL multi-scale crop + resize, stack, to tensor, normalise."""

    scales = (1.0, 0.875, 0.75, 0.66)

    def __init__(self, paths: list[str], seed: int = 0):
        self.paths, self.seed = paths, seed

    def _crop_params(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        base = min(w, h)
        sizes = [int(base * s) for s in self.scales]
        sizes = [SIZE if abs(s - SIZE) < 3 else s for s in sizes]
        pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= 1]
        cw, ch = pairs[rng.integers(len(pairs))]
        sx, sy = (w - cw) // 4, (h - ch) // 4
        offsets = [(0, 0), (4 * sx, 0), (0, 4 * sy), (4 * sx, 4 * sy), (2 * sx, 2 * sy), (0, 2 * sy),
                   (4 * sx, 2 * sy), (2 * sx, 4 * sy), (2 * sx, 0), (sx, sy), (3 * sx, sy), (sx, 3 * sy),
                   (3 * sx, 3 * sy)]
        x, y = offsets[rng.integers(len(offsets))]
        return x, y, cw, ch

    def decode(self, i: int) -> np.ndarray:
        import decord

        reader = decord.VideoReader(self.paths[i % len(self.paths)], num_threads=1, ctx=decord.cpu(0))
        indices = train_clip_indices(len(reader), NUM_FRAMES, STRIDE, make_generator(self.seed, 0, i, 0))
        return reader.get_batch(indices).asnumpy()

    def __call__(self, i: int) -> torch.Tensor:
        return self.transform(self.decode(i), i)

    def transform(self, batch: np.ndarray, i: int) -> torch.Tensor:
        from PIL import Image

        indices = range(len(batch))
        images = [Image.fromarray(batch[k]).convert("RGB") for k in range(len(indices))]
        rng = np.random.default_rng([self.seed, i])
        x, y, cw, ch = self._crop_params(*images[0].size, rng)
        flip = rng.uniform() < 0.5
        out = []
        for image in images:
            image = image.crop((x, y, x + cw, y + ch)).resize((SIZE, SIZE), Image.BILINEAR)
            out.append(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image)
        stacked = np.concatenate([np.array(im) for im in out], axis=2)  # (H, W, 3T) as VideoMAE's Stack
        tensor = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)
        frames = tensor.view(NUM_FRAMES, 3, SIZE, SIZE)
        for frame in frames:  # per-frame, per-channel normalise as VideoMAE's GroupNormalize
            for c in range(3):
                frame[c].sub_(MEAN[c]).div_(STD[c])
        return frames.permute(1, 0, 2, 3)


def _mask_fn():
    from motionmae_ds.models import build_mask_generator

    gen = build_mask_generator(kind="tube", grid=(NUM_FRAMES // 2, SIZE // 16, SIZE // 16), ratio=0.9)
    return lambda: gen(1)


# --clock cpu: this process's CPU time (all its threads) instead of wall time, for a machine shared with other jobs
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


class Ours:
    """A worker's part of one item: the dataset's item and its collation into the batch buffer; returns clips."""

    def __init__(self, records: list, num_repeats: int, backend: str = "auto", num_frames: int = NUM_FRAMES,
                 sampling_rate: int = STRIDE) -> None:
        self.ds = VideoClipDataset(records, mode="pretrain", num_frames=num_frames, sampling_rate=sampling_rate,
                                   input_size=SIZE, flip=True, num_repeats=num_repeats, backend=backend)

    def __call__(self, i: int) -> int:
        batch = collate_clips([self.ds[i % len(self.ds)]])
        assert batch["video"].frames[0].dtype == torch.uint8
        return batch["video"].num_clips


class DecodeOnly:
    """The same backend decoding the same frames of the same file with the same seeks, and nothing else."""

    def __init__(self, records: list, num_repeats: int, backend: str = "auto") -> None:
        self.records, self.num_repeats, self.backend = records, num_repeats, backend

    def __call__(self, i: int) -> int:
        record = self.records[i % len(self.records)]
        with VideoReader(record.path, self.backend) as reader:  # as the dataset: one open per item
            n = reader.num_frames
            # the dataset's draws for its item i (seed 0, epoch 0, attempt 0): the same clips, so the same frames
            draw = make_generator(0, 0, i % len(self.records), 0)
            clips = repeated_train_indices("dense", n, NUM_FRAMES, STRIDE, self.num_repeats, draw)
            reader.decode_only(sorted({f for clip in clips for f in clip}))
        return self.num_repeats


class VideoMAEStyle:
    def __init__(self, paths: list[str]) -> None:
        self.base, self.mask = VideoMAEStyleBaseline(paths), _mask_fn()

    def __call__(self, i: int) -> int:
        out = self.base(i)
        self.mask()
        assert out.shape == (3, NUM_FRAMES, SIZE, SIZE), out.shape
        return 1


def as_worker() -> None:
    """Run as a DataLoader worker does: the decoders then write frames into shared memory (what a worker sends
    to the main process without copying; ``decode.common.frame_buffer``), and that allocation is timed too."""
    from torch.utils.data._utils import worker

    worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)


def _rate(fn, start: int, items: int) -> float:
    t0, clips = _clock(), 0
    for i in range(start, start + items):
        clips += fn(i)
    return clips / (_clock() - t0)


def timed(cases: dict, items: dict, repeats: int) -> dict:
    """Median clips/s of each case; all cases timed back to back in each repeat, the order rotating."""
    names = list(cases)
    for name in names:
        _rate(cases[name], 0, 1)  # warm-up: imports, page cache
    rates: dict = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(_rate(cases[name], 1000 * (r + 1), items[name]))
    return {name: statistics.median(v) for name, v in rates.items()}


def reencoded(paths: list[str]) -> list[str]:
    from motionmae_ds.data.reencode import reencode_file

    out = []
    for p in paths:
        dst = str(Path(p).with_name(Path(p).stem + "_s320_k16.mp4"))
        if not os.path.exists(dst):
            reencode_file(p, dst, short_side=320, keyint=16)
        out.append(dst)
    return out


def bench_matrix(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for width, height in ((320, 240), (640, 360)):
        original = [str(make_bench_video(out / f"bench_{width}x{height}_{k}.mp4", width, height, args.frames, k))
                    for k in range(args.videos)]
        for source, paths in (("original", original), ("reencoded", reencoded(original))):
            # the files listed many times over: item i is then a fresh draw (its own random clips) for every i timed
            records = [VideoRecord(p, 0, 0, None, False) for p in paths] * 500
            cases, items, keys = {}, {}, {}
            for r in (1, 4):
                for case, fn in (("ours", Ours(records, r)), ("decode_only", DecodeOnly(records, r))):
                    cases[(case, r)], items[(case, r)] = fn, max(1, args.clips // r)
            cases[("videomae_style", 1)], items[("videomae_style", 1)] = VideoMAEStyle(paths), args.clips
            keys = timed(cases, items, args.repeats)
            for (case, r), rate in keys.items():
                results.append({"video": f"{width}x{height}", "source": source, "num_repeats": r, "case": case,
                                "clips_per_s": round(rate, 2)})
                print(f"{width}x{height} {source:9s} R={r} {case:14s} {rate:7.1f} clips/s", flush=True)
    return results


def _lookup(results: list[dict], video: str, source: str, r: int, case: str) -> float:
    return next(x["clips_per_s"] for x in results
                if (x["video"], x["source"], x["num_repeats"], x["case"]) == (video, source, r, case))


def print_matrix(results: list[dict], args) -> None:
    print(f"\nmachine: {machine(1)}; one worker (1 thread), {args.repeats} repeats, median, {args.clock} clock")
    print("| video | source | num_repeats | ours clips/s | decode_only clips/s | ours / decode_only "
          "| videomae_style clips/s | ours / videomae_style |")
    print("|---|---|---|---|---|---|---|---|")
    for video in ("320x240", "640x360"):
        for source in ("original", "reencoded"):
            base = _lookup(results, video, source, 1, "videomae_style")
            for r in (1, 4):
                o, d = _lookup(results, video, source, r, "ours"), _lookup(results, video, source, r, "decode_only")
                print(f"| {video} | {source} | {r} | {o:.1f} | {d:.1f} | {o / d:.2f} | {base:.1f} | {o / base:.2f}x |")


def bench_list(args) -> None:
    """clips/s per core of ours on a sample of the user's videos, and workers per GPU for ``--target``."""
    records = read_list(args.list, root=args.root or "")
    rng = random.Random(0)
    sample = rng.sample(records, min(args.sample, len(records)))
    ours = Ours(sample, args.num_repeats, args.backend, args.num_frames, args.sampling_rate)
    for i in range(min(2, len(sample))):
        ours(i)  # warm-up
    t0, clips = _clock(), 0
    for _ in range(args.repeats):
        for i in range(len(sample)):
            clips += ours(i)
    rate = clips / (_clock() - t0)
    workers = math.ceil(args.target / rate)
    print(f"machine: {machine(1)}; {len(sample)} of {len(records)} videos of {args.list}, {args.repeats} passes, "
          f"{args.clock} clock")
    print(f"clips (num_frames={args.num_frames}, sampling_rate={args.sampling_rate}, num_repeats={args.num_repeats}): "
          f"{rate:.1f} clips/s per core (one worker)")
    print(f"for {args.target:g} clips/s per GPU: {workers} workers per GPU "
          f"(data.num_workers={workers}, {workers} CPU cores per GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=8, help="clips per timed run")
    parser.add_argument("--frames", type=int, default=300, help="frames per generated video (10 s at 30 fps)")
    parser.add_argument("--videos", type=int, default=2, help="videos per resolution")
    parser.add_argument("--out", default="/tmp/motionmae_bench_videos")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall", help="cpu: process CPU time, not wall")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--list", default="", help="time ours on a sample of this list file's videos")
    parser.add_argument("--root", default="", help="--list: the folder its relative paths start from")
    parser.add_argument("--sample", type=int, default=16, help="--list: videos to sample")
    parser.add_argument("--target", type=float, default=900.0, help="--list: clips/s one GPU trains")
    parser.add_argument("--num_frames", type=int, default=NUM_FRAMES)
    parser.add_argument("--sampling_rate", type=int, default=STRIDE)
    parser.add_argument("--num_repeats", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    as_worker()
    if args.list:
        bench_list(args)
        return
    results = bench_matrix(args)
    print_matrix(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
