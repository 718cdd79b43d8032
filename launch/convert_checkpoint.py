"""Convert a DeepSpeed checkpoint (or an HF VideoMAE directory) for use outside this run.

    python launch/convert_checkpoint.py --input runs/x/checkpoints --output x.pth --format plain
    python launch/convert_checkpoint.py --input runs/x/checkpoints --tag step00000100 --output enc.safetensors \
        --format encoder --safetensors
    python launch/convert_checkpoint.py --input runs/x/checkpoints --output x_hf --format hf
    python launch/convert_checkpoint.py --input runs/x/checkpoints --format universal   # resume at another size

See docs/CHECKPOINTS.md. Exit codes: 0 written, 2 bad input (one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE checkpoint conversion")
    p.add_argument("--input", required=True, help="RUN_DIR, RUN_DIR/checkpoints, a tag dir, or an HF VideoMAE dir")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the one 'latest' names)")
    p.add_argument("--output", default=None, help="file (plain, encoder), directory (hf), or checkpoint dir "
                                                  "(universal; default: the input's)")
    p.add_argument("--format", required=True, choices=("plain", "encoder", "hf", "universal"))
    p.add_argument("--safetensors", action="store_true", help="plain/encoder: write safetensors, not a pickle")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from motionmae_ds.tools.convert import export

    try:
        written = export(args.input, args.output, args.format, tag=args.tag, use_safetensors=args.safetensors,
                         force=args.force)
    except (ValueError, OSError) as exc:  # ckpt.CheckpointError is a ValueError; OSError: e.g. an unwritable output
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"wrote {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
