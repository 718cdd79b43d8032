"""Reconstruction figures for any video from a pretraining checkpoint (no DeepSpeed engine needed).

    python launch/visualize.py --checkpoint runs/pretrain_demo/checkpoints --video clip.mp4 --out vis_out
writes OUT/<video>_mask90.png and OUT/<video>_mask95.png (original, mask, predicted, true/pred motion).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="MotionMAE reconstruction figures")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints/ directory")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--out", required=True, help="output directory for PNGs")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.95], help="mask ratios")
    p.add_argument("--seed", type=int, default=0, help="mask seed")
    args = p.parse_args(argv)

    from motionmae_ds.config import ConfigError
    from motionmae_ds.data.decode import VideoDecodeError
    from motionmae_ds.tools.visualize import load_clip, load_pretraining_checkpoint, render_reconstruction

    try:
        if not Path(args.video).is_file():
            raise ConfigError(f"--video {args.video}: file not found")
        model, cfg = load_pretraining_checkpoint(args.checkpoint, args.tag)
        video = load_clip(cfg, args.video)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for ratio in args.ratios:
            path = out / f"{Path(args.video).stem}_mask{round(ratio * 100)}.png"
            render_reconstruction(model, video, cfg, ratio=ratio, seed=args.seed).save(path)
            print(path)
    except (ConfigError, ValueError, VideoDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
