"""Multi-view test of finetuned weights: K temporal clips x 3 spatial crops per video, softmax averaged.

    deepspeed launch/evaluate.py --checkpoint runs/finetune_demo                 # config from the run dir
    deepspeed --num_gpus 4 launch/evaluate.py --checkpoint runs/ssv2_b/checkpoints \
        --config configs/finetune_ssv2_vit_base.yaml --set eval.test_clips=2
    python launch/evaluate.py --checkpoint model.pth --config FILE --output_dir DIR

--checkpoint: a finetune run dir, its checkpoints dir or a tag dir, or a .pth (ours or VideoMAE's finetuned
classifier). Writes metrics.json (top1, top5, num_videos, views_per_video) and predictions.jsonl to
--output_dir (default: <run dir>/eval, or eval/ next to a .pth). Exit codes as launch/pretrain.py (2: bad input).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from motionmae_ds.checkpoint.layout import RUN_CONFIG, find_run_dir
from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.evaluate import evaluate_checkpoint, require_finetuned
from motionmae_ds.runtime.cli import metrics_line, run_entry
from motionmae_ds.runtime.flags import (
    add_checkpoint,
    add_config,
    add_local_rank,
    add_option,
    add_output_dir,
    add_set,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MotionMAE multi-view evaluation")
    add_checkpoint(p, "finetune run dir, DeepSpeed checkpoint dir or .pth file", required=True)
    add_config(p, "the run's config.yaml")
    add_set(p)
    add_option(p, "--split", default="test", choices=("test", "val"), help="test: K x 3 views; val: one view")
    add_output_dir(p, "where metrics.json and predictions.jsonl go")
    add_local_rank(p)
    return p


def _run_dir(checkpoint: Path) -> Path:
    """The run directory a checkpoint path belongs to, else the folder the path names (or sits in)."""
    return find_run_dir(checkpoint) or (checkpoint.parent if checkpoint.is_file() else checkpoint)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.exists():
            raise ConfigError(f"--checkpoint {checkpoint}: no such file or directory")
        require_finetuned(checkpoint)  # before its run's config is read as a finetuning config
        run_dir = _run_dir(checkpoint)
        config = args.config or run_dir / RUN_CONFIG
        if not Path(config).is_file():
            raise ConfigError(f"--checkpoint {checkpoint}: no config.yaml in its run directory; pass --config")
        # the weights come from --checkpoint; the run's finetune.init is not read (it may no longer exist)
        cfg = load_finetune_config(config, args.set)
        out = Path(args.output_dir) if args.output_dir else run_dir / "eval"
        metrics = evaluate_checkpoint(cfg, checkpoint, out, split=args.split)
        print(metrics_line(args.split, metrics, out), flush=True)
        return 0

    return run_entry(body)


if __name__ == "__main__":
    sys.exit(main())
