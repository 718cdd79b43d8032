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
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.sampling import make_generator, train_clip_indices
from motionmae_ds.data.transforms import TrainTransform

NUM_FRAMES, STRIDE, SIZE = 16, 4, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


def _rate(fn, start: int, clips: int, mask) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + clips):
        out = fn(i)
        mask()
        assert out.shape == (3, NUM_FRAMES, SIZE, SIZE), out.shape
    return clips / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=12, help="clips per timed run")
    parser.add_argument("--frames", type=int, default=300, help="frames per generated video (10 s at 30 fps)")
    parser.add_argument("--videos", type=int, default=2, help="videos per resolution")
    parser.add_argument("--out", default="/tmp/motionmae_bench_videos")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask = _mask_fn()
    rows = []
    for width, height in ((320, 240), (640, 360)):
        paths = [str(make_bench_video(out / f"bench_{width}x{height}_{k}.mp4", width, height, args.frames, k))
                 for k in range(args.videos)]
        records = [VideoRecord(p, 0, 0, None, False) for p in paths]
        ours = VideoClipDataset(records, mode="pretrain", num_frames=NUM_FRAMES, sampling_rate=STRIDE,
                                input_size=SIZE, flip=True)
        base = VideoMAEStyleBaseline(paths)
        ours_fn = lambda i: ours[i % len(ours)]["video"]  # noqa: E731
        _rate(ours_fn, 0, 2, mask), _rate(base, 0, 2, mask)  # warm-up: imports, page cache
        # Transforms alone, on the same decoded frames: the part of the pipeline that is ours to speed up.
        decoded = [base.decode(i) for i in range(4)]
        tf = TrainTransform(SIZE, scale=(0.5, 1.0), flip=True)
        ours_tf = lambda i: tf(torch.from_numpy(decoded[i % 4]), make_generator(0, 0, i, 0))  # noqa: E731
        base_tf = lambda i: base.transform(decoded[i % 4], i)  # noqa: E731
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
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, 1 thread; {args.repeats} repeats x {args.clips} clips, median")
    print("| video | stage | ours clips/s | VideoMAE-style clips/s | speed-up |")
    print("|---|---|---|---|---|")
    for name, label, o, b, ratio in rows:
        print(f"| {name} | {label} | {o:.1f} | {b:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
