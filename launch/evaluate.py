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

from motionmae_ds.config import ConfigError, load_finetune_config
from motionmae_ds.eval.evaluate import evaluate_checkpoint
from motionmae_ds.runtime.cli import metrics_line, run_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE multi-view evaluation")
    p.add_argument("--checkpoint", required=True, help="finetune run dir, DeepSpeed checkpoint dir or .pth file")
    p.add_argument("--config", default=None, help="experiment YAML (default: the run's config.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--split", default="test", choices=("test", "val"), help="test: K x 3 views; val: one view")
    p.add_argument("--output_dir", default=None, help="where metrics.json and predictions.jsonl go")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _run_dir(checkpoint: Path) -> Path:
    """The run directory a checkpoint path belongs to (where config.yaml sits)."""
    for candidate in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    return checkpoint.parent if checkpoint.is_file() else checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.exists():
            raise ConfigError(f"--checkpoint {checkpoint}: no such file or directory")
        run_dir = _run_dir(checkpoint)
        config = args.config or run_dir / "config.yaml"
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
