"""Frozen-encoder features of every video of a list: pooled (and optionally the token grid), safetensors.

    python launch/extract_features.py --checkpoint runs/pretrain_demo --out feats/val        # embedded set, val
    deepspeed --num_gpus 8 launch/extract_features.py --checkpoint runs/k400_b/checkpoints \
        --config configs/finetune_k400_vit_base.yaml --list /data/k400/val.csv --out feats/k400_val --tokens

--checkpoint: run dir, DeepSpeed checkpoint dir, .pth/.safetensors or HF VideoMAE directory ("none": random
init). The config's model section sizes the encoder and its data section reads the clips (the validation
clip of the finetuning job). Rerunning with the same --out skips the videos already written.
Writes OUT/videos/*.safetensors, OUT/index.json and OUT/pooled.safetensors. Exit codes: 0, 2 (bad input).
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.config import load_finetune_config
from motionmae_ds.eval.features import extract_features
from motionmae_ds.runtime.cli import run_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE frozen-feature extraction")
    p.add_argument("--checkpoint", required=True, help="encoder weights (any source), or none")
    p.add_argument("--out", required=True, help="output directory (rerun the same --out to resume)")
    p.add_argument("--list", default=None, help="list file of videos (default: the config's --split list)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="which list of the config")
    p.add_argument("--config", default=None, help="finetuning YAML (default: configs/finetune_demo.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--tokens", action="store_true", help="also store each video's token grid (t, h, w, D)")
    p.add_argument("--batch_size", type=int, default=None, help="videos per forward (default: eval.batch_size)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        cfg = load_finetune_config(args.config, args.set)
        summary = extract_features(cfg, args.checkpoint, args.out, list_file=args.list, split=args.split,
                                   tokens=args.tokens, batch_size=args.batch_size)
        if summary.bad:
            print(f"unreadable: {', '.join(b['path'] for b in summary.bad)}", flush=True)
        print(summary.line(), flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
