"""MotionMAE pretraining under DeepSpeed.

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2.json          # embedded demo
    deepspeed --num_gpus 2 launch/pretrain.py --deepspeed_config ds_configs/zero2.json \
        --config configs/pretrain_ssv2_vit_base.yaml --set run.output_dir=runs/ssv2_b
    python launch/pretrain.py ...                                                   # one process, no launcher

Runs again with the same output dir resume from its checkpoints/latest unless --no_resume.
Exit codes: 0 done, 2 bad config/input, 3 non-finite loss, 4 too many unreadable videos, 5 lost peer rank,
75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint (rerun to resume).
"""
from __future__ import annotations

import argparse
import sys

from motionmae_ds.config import load_pretrain_config
from motionmae_ds.runtime.cli import is_main_process, run_entry, training_parser
from motionmae_ds.tools.visualize import save_reconstruction_figure
from motionmae_ds.train.pretrain import run_pretraining


def build_parser() -> argparse.ArgumentParser:
    return training_parser("MotionMAE pretraining (DeepSpeed)", "configs/pretrain_demo.yaml")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = load_pretrain_config(args.config, args.set)
        summary = run_pretraining(cfg, args.deepspeed_config, args.output_dir, resume=not args.no_resume,
                                  figure=save_reconstruction_figure)
        if summary.get("first_loss") is not None and is_main_process():
            print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}",
                  flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
