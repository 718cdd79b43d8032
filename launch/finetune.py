"""MotionMAE finetuning / linear probing under DeepSpeed.

    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2.json        # embedded demo
    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2.json --set finetune.init=none  # from scratch
    deepspeed --num_gpus 8 launch/finetune.py --deepspeed_config ds_configs/zero2.json \
        --config configs/finetune_ssv2_vit_base.yaml --set finetune.init=runs/ssv2_b
    deepspeed launch/finetune.py --config configs/linprobe_demo.yaml               # linear probe
    deepspeed launch/finetune.py --eval [--checkpoint PATH] ...                     # test pass only

The demo starts from the pretraining demo's run (runs/pretrain_demo); run that first. Runs again with the
same output dir resume from checkpoints/latest (mid-epoch too) unless --no_resume. The multi-view test pass at
the end writes metrics.json and predictions.jsonl into the output dir.
Exit codes: 0 done, 2 bad config/input, 3 non-finite loss, 4 too many unreadable videos, 5 lost peer rank,
75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint (rerun to resume).
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.checkpoint.layout import RUN_CHECKPOINTS
from motionmae_ds.config import load_finetune_config
from motionmae_ds.eval.evaluate import evaluate_checkpoint
from motionmae_ds.runtime.cli import metrics_line, output_dir_of, run_entry, training_parser
from motionmae_ds.runtime.flags import add_checkpoint, add_option
from motionmae_ds.train.finetune import run_finetuning


def build_parser() -> argparse.ArgumentParser:
    p = training_parser("MotionMAE finetuning (DeepSpeed)", "configs/finetune_demo.yaml")
    add_option(p, "--eval", action="store_true", help="only the multi-view test pass of the run's checkpoint")
    add_checkpoint(p, "with --eval: weights to test (default: OUTPUT_DIR/checkpoints)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = load_finetune_config(args.config, args.set)
        if args.eval:
            out = output_dir_of(cfg, args.output_dir, "finetune")
            metrics = evaluate_checkpoint(cfg, args.checkpoint or out / RUN_CHECKPOINTS, out / "eval")
            print(metrics_line("test", metrics, out / "eval"), flush=True)
            return 0
        summary = run_finetuning(cfg, args.deepspeed_config, args.output_dir, resume=not args.no_resume)
        if "test" in summary:
            print(metrics_line("done: test", summary["test"]), flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
