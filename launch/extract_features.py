"""Frozen-encoder features of every video of a list: pooled (and optionally the token grid), safetensors.

    python launch/extract_features.py --checkpoint runs/pretrain_demo --output_dir feats/val  # embedded set
    deepspeed --num_gpus 8 launch/extract_features.py --checkpoint runs/k400_b/checkpoints \
        --config configs/finetune_k400_vit_base.yaml --list /data/k400/val.csv --output_dir feats/k400_val --tokens

--checkpoint: run dir, DeepSpeed checkpoint dir, .pth/.safetensors or HF VideoMAE directory ("none": random
init). The config's model section sizes the encoder and its data section reads the clips (the validation
clip of the finetuning job). Rerunning with the same --output_dir skips the videos already written.
--root prefixes the list's relative paths (as in prepare_data.py and make_shards.py; default: the config's
data.root). Writes OUTPUT_DIR/videos/*.safetensors, OUTPUT_DIR/index.json and OUTPUT_DIR/pooled.safetensors.
Exit codes: 0 (unreadable videos are named and left out), 2 (bad input), 4 (no video of the list could be read).
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.config import load_finetune_config
from motionmae_ds.eval.features import extract_features
from motionmae_ds.runtime.cli import run_entry
from motionmae_ds.runtime.flags import (
    add_checkpoint,
    add_config,
    add_local_rank,
    add_option,
    add_output_dir,
    add_set,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MotionMAE frozen-feature extraction")
    add_checkpoint(p, "encoder weights (any source), or none", required=True)
    add_output_dir(p, "where the features go (rerun the same --output_dir to resume)", required=True, old=("--out",))
    add_option(p, "--list", default=None, help="list file of videos (default: the config's --split list)")
    add_option(p, "--root", default=None, help="data root prefixed to the list's relative paths (default: data.root)")
    add_option(p, "--split", default="val", choices=("train", "val", "test"), help="which list of the config")
    add_config(p, "configs/finetune_demo.yaml", what="finetuning")
    add_set(p)
    add_option(p, "--tokens", action="store_true", help="also store each video's token grid (t, h, w, D)")
    add_option(p, "--batch_size", type=int, default=None, help="videos per forward (default: eval.batch_size)")
    add_local_rank(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = load_finetune_config(args.config, args.set)
        summary = extract_features(cfg, args.checkpoint, args.output_dir, list_file=args.list, split=args.split,
                                   tokens=args.tokens, batch_size=args.batch_size, root=args.root)
        if summary.bad:
            print(f"unreadable: {', '.join(b['path'] for b in summary.bad)}", flush=True)
        print(summary.line(), flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
