"""Weighted k-NN classification (DINO's: k = 20, temperature 0.07) of frozen features.

    python launch/knn_eval.py --checkpoint runs/pretrain_demo --output_dir runs/knn_demo  # embedded classes
    python launch/knn_eval.py --train feats/k400_train --test feats/k400_val         # two extraction dirs
    deepspeed --num_gpus 8 launch/knn_eval.py --checkpoint SRC --config configs/finetune_k400_vit_base.yaml \
        --output_dir runs/knn_k400_b                # the config's train_list and val_list, extracted (resumable)

Prints top-1 / top-5 and writes knn.json (into --output_dir, or the --test directory). Exit codes: 0, 2.
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.knn import knn_evaluate, knn_from_checkpoint
from motionmae_ds.runtime import distributed as dist_utils
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
    p = argparse.ArgumentParser(description="MotionMAE weighted k-NN on frozen features")
    add_checkpoint(p, "encoder weights (any source, or none): extract, then k-NN")
    add_config(p, "configs/finetune_demo.yaml", what="finetuning")
    add_set(p)
    add_output_dir(p, "with --checkpoint: where features and knn.json go", old=("--out",))
    add_option(p, "--test_split", default="val", choices=("val", "test"), help="with --checkpoint")
    add_option(p, "--train", default=None, help="extraction dir of the training videos")
    add_option(p, "--test", default=None, help="extraction dir of the videos to classify")
    add_option(p, "--k", type=int, default=20)
    add_option(p, "--temperature", type=float, default=0.07)
    add_local_rank(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.k < 1 or args.temperature <= 0:
            raise ConfigError(f"--k must be >= 1 and --temperature > 0, got {args.k} and {args.temperature}")
        if args.checkpoint is not None:
            if not args.output_dir:
                raise ConfigError("--checkpoint needs --output_dir (where the extracted features go)")
            cfg = load_finetune_config(args.config, args.set)
            metrics = knn_from_checkpoint(cfg, args.checkpoint, args.output_dir, args.k, args.temperature,
                                          args.test_split)
        elif args.train and args.test:
            metrics = knn_evaluate(args.train, args.test, args.k, args.temperature, out=args.output_dir or args.test)
        else:
            raise ConfigError("give --checkpoint (and --output_dir), or --train and --test extraction directories")
        if dist_utils.is_main():
            print(f"k-NN (k={metrics['k']}, T={metrics['temperature']}) top-1 {metrics['top1']:.2f}  top-5 "
                  f"{metrics['top5']:.2f}  ({metrics['num_train']} train, {metrics['num_test']} test videos)",
                  flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
