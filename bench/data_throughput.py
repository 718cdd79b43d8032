"""Clips/s of one data worker for the pretraining pipeline: ours vs a VideoMAE-style baseline, same run.

    python bench/data_throughput.py [--repeats 5] [--clips 12] [--frames 300] [--out /tmp/bench_videos]

Both pipelines take 16 frames at stride 4 from a random start, crop at a random scale, resize to 224x224,
flip half the clips and normalise to float (3, 16, 224, 224), in this process (a DataLoader worker runs
exactly this code), on H.264 MP4 files made here at 320x240 and 640x360 (x264 defaults: keyint 250,
B-frames). Clip indices come from the same sampler with the same seeds, so both decode the same frames.
- ours: ``VideoClipDataset(mode="pretrain")[i]`` - decode.py (decord for MP4, batch of wanted frames),
  one uint8 crop + resize over all frames, flip and normalise on the tensor.
- baseline, the way VideoMAE's pretraining loader works: ``decord.VideoReader(num_threads=1)``,
  ``get_batch(...).asnumpy()``, a PIL image per frame, multi-scale crop with scales (1, .875, .75, .66) of
  the shorter side and 13 fixed positions, PIL bilinear resize per frame, stack, to float, per-frame
  normalise.
The mask generator (if ``motionmae_ds.models.build_mask_generator`` exists) is called once per clip in
both, as the data loader would. Timings alternate ours/baseline per repeat; the table shows medians.
A second row per resolution times the transforms alone on the same already-decoded frames.
Repeated temporal sampling (third table): ours with ``num_repeats`` 1 and 4 (4 clips with their own starts from
one opened video, the union of their frames decoded once) and decode_backend auto / torchcodec, against the
baseline timed in the same rounds; clips/s counts clips (an R=4 item is 4 clips).
Data at scale (second table, ours in both columns): the files re-encoded by ``prepare_data.py --reencode``
(short side 320, keyint 16, x264 tune fastdecode) against the original files, and the original files packed into
a WebDataset shard (``make_shards``; bytes read by range, decoded in memory) against the same files from disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from common import machine

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.sampling import make_generator, train_clip_indices
from motionmae_ds.data.transforms import TrainTransform
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
    try:
        from motionmae_ds.models import build_mask_generator
    except ImportError:
        return lambda: None
    gen = build_mask_generator(kind="tube", grid=(NUM_FRAMES // 2, SIZE // 16, SIZE // 16), ratio=0.9)
    return lambda: gen(1)


# --clock cpu: this process's CPU time (all its threads) instead of wall time, for a machine shared with other jobs
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def _rate(fn, start: int, clips: int, mask) -> float:
    t0 = _clock()
    for i in range(start, start + clips):
        out = fn(i)
        mask()
        assert out.shape == (3, NUM_FRAMES, SIZE, SIZE), out.shape
    return clips / (_clock() - t0)


_clock = CLOCK["wall"]


def _paired(cases: list, clips: int, repeats: int, mask) -> list[float]:
    """Median clips/s of each case, the cases timed back to back in each repeat (order rotating)."""
    rates = [[] for _ in cases]
    for r in range(repeats):
        order = list(range(len(cases)))
        order = order[r % len(cases):] + order[:r % len(cases)]
        for k in order:
            rates[k].append(_rate(cases[k], 1000 * (r + 1), clips, mask))
    return [statistics.median(x) for x in rates]


def scale_rows(name: str, paths: list[str], out: Path, args, mask) -> list[tuple]:
    """(video, case, clips/s, reference clips/s, ratio) for the re-encoded files and the shard."""
    from motionmae_ds.data.reencode import reencode_file
    from motionmae_ds.data.shards import ShardClipDataset, build_index, write_shards

    kw = dict(mode="pretrain", num_frames=NUM_FRAMES, sampling_rate=STRIDE, input_size=SIZE, flip=True)
    small = []
    for p in paths:
        dst = str(Path(p).with_name(Path(p).stem + "_s320_k16.mp4"))
        if not os.path.exists(dst):
            reencode_file(p, dst, short_side=320, keyint=16)
        small.append(dst)
    shard_dir = out / f"shards_{name}"
    shutil.rmtree(shard_dir, ignore_errors=True)
    shard = write_shards([(p, 0, 0) for p in paths], str(shard_dir))[0]
    sets = [VideoClipDataset([VideoRecord(p, 0, 0, None, False) for p in paths], **kw),
            VideoClipDataset([VideoRecord(p, 0, 0, None, False) for p in small], **kw),
            ShardClipDataset(build_index(shard), **kw)]
    cases = [lambda i, d=d: d[i % len(d)]["video"] for d in sets]
    for fn in cases:
        _rate(fn, 0, 2, mask)  # warm-up
    disk, reencoded, sharded = _paired(cases, args.clips, args.repeats, mask)
    return [(name, "re-encoded (short side 320, keyint 16) vs original files", reencoded, disk, reencoded / disk),
            (name, "WebDataset shard vs the same files on disk", sharded, disk, sharded / disk)]


def _clips_rate(fn, start: int, items: int, mask) -> float:
    """Clips/s of ``fn`` giving one clip (3, T, S, S) or R clips (R, 3, T, S, S) per item; one mask per clip."""
    t0, clips = _clock(), 0
    for i in range(start, start + items):
        out = fn(i)
        views = out if out.dim() == 5 else out[None]
        assert tuple(views.shape[1:]) == (3, NUM_FRAMES, SIZE, SIZE), out.shape
        for _ in range(len(views)):
            mask()
        clips += len(views)
    return clips / (_clock() - t0)


def repeat_rows(name: str, paths: list[str], base, args, mask) -> list[tuple]:
    """(video, case, clips/s, VideoMAE-style clips/s, ratio): ours with num_repeats 1 and 4 (R clips per opened
    video, their frames decoded once), with decode_backend auto, pyav and torchcodec, timed beside the baseline."""
    from motionmae_ds.data.decode import torchcodec as torchcodec_backend

    records = [VideoRecord(p, 0, 0, None, False) for p in paths]
    cases, labels = [(base, args.clips)], []
    variants = [("auto", 1), ("auto", 4), ("pyav", 1), ("pyav", 4)]
    variants += [("torchcodec", 1), ("torchcodec", 4)] if torchcodec_backend.available() else []
    for backend, repeats in variants:
        ds = VideoClipDataset(records, mode="pretrain", num_frames=NUM_FRAMES, sampling_rate=STRIDE,
                              input_size=SIZE, flip=True, num_repeats=repeats, backend=backend)
        cases.append((lambda i, d=ds: d[i % len(d)]["video"], max(1, args.clips // repeats)))
        labels.append(f"num_repeats={repeats}, decode_backend {backend}")
    for case, _ in cases:
        _clips_rate(case, 0, 1, mask)  # warm-up
    rates: list[list[float]] = [[] for _ in cases]
    for r in range(args.repeats):
        for k in [(k + r) % len(cases) for k in range(len(cases))]:
            rates[k].append(_clips_rate(cases[k][0], 1000 * (r + 1), cases[k][1], mask))
    medians = [statistics.median(x) for x in rates]
    return [(name, label, m, medians[0], m / medians[0]) for label, m in zip(labels, medians[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=12, help="clips per timed run")
    parser.add_argument("--frames", type=int, default=300, help="frames per generated video (10 s at 30 fps)")
    parser.add_argument("--videos", type=int, default=2, help="videos per resolution")
    parser.add_argument("--out", default="/tmp/motionmae_bench_videos")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall", help="cpu: process CPU time, not wall")
    args = parser.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask = _mask_fn()
    rows, at_scale, repeated = [], [], []
    for width, height in ((320, 240), (640, 360)):
        paths = [str(make_bench_video(out / f"bench_{width}x{height}_{k}.mp4", width, height, args.frames, k))
                 for k in range(args.videos)]
        records = [VideoRecord(p, 0, 0, None, False) for p in paths]
        ours = VideoClipDataset(records, mode="pretrain", num_frames=NUM_FRAMES, sampling_rate=STRIDE,
                                input_size=SIZE, flip=True)
        base = VideoMAEStyleBaseline(paths)
        ours_fn = lambda i, ours=ours: ours[i % len(ours)]["video"]  # noqa: E731
        _rate(ours_fn, 0, 2, mask), _rate(base, 0, 2, mask)  # warm-up: imports, page cache
        # Transforms alone, on the same decoded frames: the part of the pipeline that is ours to speed up.
        decoded = [base.decode(i) for i in range(4)]
        tf = TrainTransform(SIZE, scale=(0.5, 1.0), flip=True)
        ours_tf = lambda i, tf=tf, decoded=decoded: tf(torch.from_numpy(decoded[i % 4]), make_generator(0, 0, i, 0))  # noqa: E731,E501
        base_tf = lambda i, base=base, decoded=decoded: base.transform(decoded[i % 4], i)  # noqa: E731
        for label, ours_case, base_case, clips in (("decode + transform", ours_fn, base, args.clips),
                                                   ("transform only", ours_tf, base_tf, 4 * args.clips)):
            ours_rates, base_rates = [], []
            for r in range(args.repeats):
                start = 1000 * (r + 1)
                pair = [(ours_rates, ours_case), (base_rates, base_case)]
                for rates, fn in pair if r % 2 == 0 else pair[::-1]:
                    rates.append(_rate(fn, start, clips, mask))
            o, b = statistics.median(ours_rates), statistics.median(base_rates)
            rows.append((f"{width}x{height}", label, o, b, o / b))
        at_scale += scale_rows(f"{width}x{height}", paths, out, args, mask)
        repeated += repeat_rows(f"{width}x{height}", paths, base, args, mask)
    print(f"machine: {machine(1)}; {args.repeats} repeats x {args.clips} clips, median, {args.clock} clock")
    print("| video | stage | ours clips/s | VideoMAE-style clips/s | speed-up |")
    print("|---|---|---|---|---|")
    for name, label, o, b, ratio in rows:
        print(f"| {name} | {label} | {o:.1f} | {b:.1f} | {ratio:.2f}x |")
    print("\n| video | ours, decode + transform | clips/s | reference clips/s | ratio |")
    print("|---|---|---|---|---|")
    for name, label, o, b, ratio in at_scale:
        print(f"| {name} | {label} | {o:.1f} | {b:.1f} | {ratio:.2f}x |")
    print("\n| video | ours, decode + transform | clips/s | VideoMAE-style clips/s | speed-up |")
    print("|---|---|---|---|---|")
    for name, label, o, b, ratio in repeated:
        print(f"| {name} | {label} | {o:.1f} | {b:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
