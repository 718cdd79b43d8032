"""Reconstruction figures for any video from a pretraining checkpoint (no DeepSpeed engine needed).

    python launch/visualize.py --checkpoint runs/pretrain_demo/checkpoints --video clip.mp4 \
        --output_dir vis_out
writes OUTPUT_DIR/<video>_mask90.png and OUTPUT_DIR/<video>_mask95.png (original, mask, predicted, true/pred motion).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from motionmae_ds.runtime.flags import add_checkpoint, add_option, add_output_dir, add_tag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MotionMAE reconstruction figures")
    add_checkpoint(p, "a run's checkpoints/ directory", required=True)
    add_option(p, "--video", required=True, help="video file")
    add_output_dir(p, "where the PNGs go", required=True, old=("--out",))
    add_tag(p)
    add_option(p, "--ratios", type=float, nargs="+", default=[0.9, 0.95], help="mask ratios")
    add_option(p, "--seed", type=int, default=0, help="mask seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from motionmae_ds.config import ConfigError
    from motionmae_ds.data.decode import VideoDecodeError
    from motionmae_ds.tools.visualize import load_clip, load_pretraining_checkpoint, render_reconstruction

    try:
        if not Path(args.video).is_file():
            raise ConfigError(f"--video {args.video}: file not found")
        model, cfg = load_pretraining_checkpoint(args.checkpoint, args.tag)
        video = load_clip(cfg, args.video)
        out = Path(args.output_dir)
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
