"""Weighted k-NN classification (DINO's: k = 20, temperature 0.07) of frozen features.

    python launch/knn_eval.py --checkpoint runs/pretrain_demo --out runs/knn_demo   # embedded motion classes
    python launch/knn_eval.py --train feats/k400_train --test feats/k400_val         # two extraction dirs
    deepspeed --num_gpus 8 launch/knn_eval.py --checkpoint SRC --config configs/finetune_k400_vit_base.yaml \
        --out runs/knn_k400_b                       # the config's train_list and val_list, extracted (resumable)

Prints top-1 / top-5 and writes knn.json (into --out, or the --test directory). Exit codes: 0, 2.
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.knn import knn_evaluate, knn_from_checkpoint
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cli import run_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE weighted k-NN on frozen features")
    p.add_argument("--checkpoint", default=None, help="encoder weights (any source, or none): extract, then k-NN")
    p.add_argument("--config", default=None, help="finetuning YAML (default: configs/finetune_demo.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--out", default=None, help="with --checkpoint: where features and knn.json go")
    p.add_argument("--test_split", default="val", choices=("val", "test"), help="with --checkpoint")
    p.add_argument("--train", default=None, help="extraction dir of the training videos")
    p.add_argument("--test", default=None, help="extraction dir of the videos to classify")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        if args.k < 1 or args.temperature <= 0:
            raise ConfigError(f"--k must be >= 1 and --temperature > 0, got {args.k} and {args.temperature}")
        if args.checkpoint is not None:
            if not args.out:
                raise ConfigError("--checkpoint needs --out (where the extracted features go)")
            cfg = load_finetune_config(args.config, args.set)
            metrics = knn_from_checkpoint(cfg, args.checkpoint, args.out, args.k, args.temperature, args.test_split)
        elif args.train and args.test:
            metrics = knn_evaluate(args.train, args.test, args.k, args.temperature, out=args.out or args.test)
        else:
            raise ConfigError("give --checkpoint (and --out), or --train and --test extraction directories")
        if dist_utils.is_main():
            print(f"k-NN (k={metrics['k']}, T={metrics['temperature']}) top-1 {metrics['top1']:.2f}  top-5 "
                  f"{metrics['top5']:.2f}  ({metrics['num_train']} train, {metrics['num_test']} test videos)",
                  flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
