"""How far the clips the device finishes (data/finishing.py) are from the pre-#33 worker path, on real clips.

    python bench/finishing_error.py [--clips 40] [--out /tmp/motionmae_bench_videos]

For pretraining clips of the data_throughput bench files (H.264, 320x240 and 640x360) and their re-encoded copies,
item by item with the dataset's draws: the new path (PyAV's 4:2:0 frames, the box converted to RGB on the device,
float antialiased bilinear resize, flip, normalise) against the old one (swscale's RGB frames, uint8 antialiased
resize in the worker, rounded, flip, normalise). Prints mean and max absolute difference in pixel levels (0..255),
and the same for the conversion alone (the whole frame, device vs swscale).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from data_throughput import make_bench_video, reencoded

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.decode import VideoReader
from motionmae_ds.data.finishing import finish_clips, frame_size, yuv_to_rgb
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.loader import collate_clips
from motionmae_ds.data.transforms import hflip, normalize, resized_crop
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

SCALE = (torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255).view(3, 1, 1, 1)


def compare(paths: list[str], clips: int) -> tuple[float, float, float, float]:
    """(clip mean, clip max, conversion mean, conversion max) absolute differences in pixel levels."""
    ds = VideoClipDataset([VideoRecord(p, 0, 0, None, False) for p in paths] * 100, mode="pretrain", num_frames=16,
                          sampling_rate=4, input_size=224, backend="pyav")
    clip_err, conv_err = [], []
    for i in range(clips):
        item = ds[i]
        view = item["views"][0]
        new = finish_clips(collate_clips([item])["video"], torch.device("cpu"), 224, IMAGENET_MEAN, IMAGENET_STD)[0]
        with VideoReader(ds.records[i].path, "pyav") as reader:  # the same frames through swscale, as before #33
            n = reader.num_frames
            ds_frames = reader.get(_indices(ds, i, n))
        clip = resized_crop(ds_frames, view.box, 224)
        old = normalize(hflip(clip) if view.flip else clip, IMAGENET_MEAN, IMAGENET_STD)
        clip_err.append(((new.double() - old.double()) * SCALE).abs().flatten())
        if item["frame_format"] != "rgb":
            h, w = frame_size(item["video"], item["frame_format"])
            rgb = yuv_to_rgb(item["video"], view.positions, (0, 0, h, w), item["frame_format"])
            conv_err.append((rgb.double() - ds_frames.permute(0, 3, 1, 2).double()).abs().flatten())
    c, v = torch.cat(clip_err), torch.cat(conv_err) if conv_err else torch.zeros(1)
    return float(c.mean()), float(c.max()), float(v.mean()), float(v.max())


def _indices(ds: VideoClipDataset, i: int, n: int) -> list[int]:
    from motionmae_ds.data.sampling import make_generator, repeated_train_indices

    return repeated_train_indices("dense", n, ds.num_frames, ds.sampling_rate, 1, make_generator(ds.seed, 0, i, 0))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--out", default="/tmp/motionmae_bench_videos")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| video | source | clips | clip mean | clip max | conversion mean | conversion max |")
    print("|---|---|---|---|---|---|---|")
    for width, height in ((320, 240), (640, 360)):
        original = [str(make_bench_video(out / f"bench_{width}x{height}_{k}.mp4", width, height, 300, k))
                    for k in range(2)]
        for source, paths in (("original", original), ("reencoded", reencoded(original))):
            cm, cx, vm, vx = compare(paths, args.clips)
            print(f"| {width}x{height} | {source} | {args.clips} | {cm:.3f} | {cx:.2f} | {vm:.3f} | {vx:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
