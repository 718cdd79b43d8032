"""Convert a DeepSpeed checkpoint (or an HF VideoMAE directory) for use outside this run.

    python launch/convert_checkpoint.py --checkpoint runs/x/checkpoints --output x.pth --format plain
    python launch/convert_checkpoint.py --checkpoint runs/x/checkpoints --tag step00000100 \
        --output enc.safetensors --format encoder --safetensors
    python launch/convert_checkpoint.py --checkpoint runs/x/checkpoints --output x_hf --format hf
    python launch/convert_checkpoint.py --checkpoint runs/x/checkpoints --output x_hf_pre --format hf_pretraining
    python launch/convert_checkpoint.py --checkpoint runs/x --format universal   # -> runs/x_universal, resumed
        # at another world size by the training command with --output_dir runs/x_universal

See docs/CHECKPOINTS.md. Exit codes: 0 written, 2 bad input (one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.runtime.flags import add_checkpoint, add_option, add_output, add_tag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MotionMAE checkpoint conversion")
    add_checkpoint(p, "RUN_DIR, RUN_DIR/checkpoints, a tag dir, or an HF VideoMAE dir", required=True,
                   old=("--input",))
    add_tag(p)
    add_output(p, "file (plain, encoder), directory (hf, hf_pretraining), or a new run directory (universal; "
                  "default: the source run's directory + _universal, beside it)")
    add_option(p, "--format", required=True, choices=("plain", "encoder", "hf", "hf_pretraining", "universal"))
    add_option(p, "--safetensors", action="store_true", help="plain/encoder: write safetensors, not a pickle")
    add_option(p, "--force", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from motionmae_ds.tools.convert import export

    try:
        written = export(args.checkpoint, args.output, args.format, tag=args.tag, use_safetensors=args.safetensors,
                         force=args.force)
    except (ValueError, OSError) as exc:  # ckpt.CheckpointError is a ValueError; OSError: e.g. an unwritable output
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"wrote {written}", flush=True)
    if args.format == "universal":
        print(f"resume it with the training command and --output_dir {written.parent.parent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
