"""The data path's cases of bench/gpu_check.py: torchcodec's CUDA decoder (NVDEC) against the CPU decode of the same
frames, and the device finishing (``data/finishing.py``) of a training batch.

Without CUDA (the dry mode) the same code runs on the CPU: the decode case compares torchcodec's CPU decoder with
PyAV's (no NVDEC to compare), the finishing case finishes a tiny batch on the CPU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from common import sync

# NVDEC converts to RGB with its own kernels: frames "equal within the decoder's rounding" means a mean absolute
# difference of at most 1 level of 255 and 99.9 % of the values within 3 levels of the CPU decode
MEAN_LIMIT, P999_LIMIT = 1.0, 3.0


def bench_video(dry: bool, out_dir: Path) -> str:
    from data_throughput import make_bench_video  # bench/data_throughput.py: the loader bench's H.264 files

    width, height, frames = (64, 48, 40) if dry else (640, 360, 300)
    return str(make_bench_video(out_dir / f"gpu_check_{width}x{height}.mp4", width, height, frames, 0))


def nvdec_case(path: str, dry: bool) -> dict[str, Any]:
    """Decode clips of 16 frames at stride 4 with torchcodec on CUDA and on the CPU; their difference and the
    decode rates."""
    from motionmae_ds.data.decode import VideoReader
    from motionmae_ds.data.decode import torchcodec as torchcodec_backend

    if not torchcodec_backend.available():  # a finding, not a failure: the machine lacks torchcodec's FFmpeg
        return {"skipped": "torchcodec cannot load here: " + torchcodec_backend._load()[1][:200]}
    from torchcodec.decoders import VideoDecoder

    cuda = torch.cuda.is_available()
    cpu_dec = VideoDecoder(path, device="cpu", seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    n = int(cpu_dec.metadata.num_frames)
    clip_len, stride = (4, 2) if dry else (16, 4)
    starts = list(range(0, n - clip_len * stride, max(1, (n - clip_len * stride) // (2 if dry else 8))))
    clips = [[s + k * stride for k in range(clip_len)] for s in starts]
    if cuda:
        dev_dec = VideoDecoder(path, device="cuda", seek_mode="exact", dimension_order="NHWC")
        other = lambda idx: dev_dec.get_frames_at(idx).data  # noqa: E731
        reference = "torchcodec CUDA (NVDEC)"
    else:
        reader = VideoReader(path, backend="pyav")
        other = reader.get  # noqa: E731
        reference = "PyAV on the CPU (no CUDA: no NVDEC to compare)"
    diffs, rates = [], {}
    for name, decode in (("cpu", lambda idx: cpu_dec.get_frames_at(idx).data), ("other", other)):
        decode(clips[0])  # warm-up
        t0 = time.perf_counter()
        for idx in clips:
            decode(idx)
        sync(torch.device("cuda") if cuda and name == "other" else torch.device("cpu"))
        rates[name] = len(clips) / (time.perf_counter() - t0)
    for idx in clips:
        a = cpu_dec.get_frames_at(idx).data.int()
        b = other(idx).cpu().int()
        diffs.append((a - b).abs().flatten())
    d = torch.cat(diffs).float()
    mean, p999 = float(d.mean()), float(torch.quantile(d[:: max(1, d.numel() // 1_000_000)], 0.999))
    return {"compared_with": reference, "video": Path(path).name, "clips": len(clips), "clip_len": clip_len,
            "mean_abs_diff": round(mean, 3), "p999_abs_diff": p999, "max_abs_diff": float(d.max()),
            "within_rounding": mean <= MEAN_LIMIT and p999 <= P999_LIMIT,
            "cpu_clips_per_s": round(rates["cpu"], 1), "other_clips_per_s": round(rates["other"], 1)}


def finishing_case(dry: bool, repeats: int = 10) -> dict[str, Any]:
    """ms per batch of ``finish_clips`` on the device: B items of 16 I420 frames at 640x360 (as PyAV ships them),
    one clip each, random boxes and flips, to 224 x 224, normalised."""
    from motionmae_ds.data.finishing import finish_clips, pack_items
    from motionmae_ds.data.transforms import TrainTransform
    from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items, frames, (height, width), size = (2, 4, (48, 64), 32) if dry else (32, 16, (360, 640), 224)
    g = torch.Generator().manual_seed(0)
    tf = TrainTransform(size, scale=(0.5, 1.0), flip=True)
    data = [torch.randint(16, 236, (frames, height * 3 // 2, width), dtype=torch.uint8, generator=g)
            for _ in range(items)]
    if device.type == "cuda":
        data = [f.pin_memory() for f in data]
    views = [[tf.view(height, width, range(frames), g)] for _ in range(items)]
    batch = pack_items(data, views, ["bt601"] * items)
    out = finish_clips(batch, device, size, IMAGENET_MEAN, IMAGENET_STD)  # warm-up: kernels, mean/std
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = finish_clips(batch, device, size, IMAGENET_MEAN, IMAGENET_STD)
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    return {"device": device.type, "items": items, "frames": frames, "source": f"{width}x{height} I420",
            "size": size, "out_shape": list(out.shape), "ms_per_batch": round(1000 * seconds, 3),
            "clips_per_s": round(items / seconds, 1)}
