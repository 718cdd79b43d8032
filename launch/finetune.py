"""MotionMAE finetuning / linear probing under DeepSpeed.

    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2.json        # embedded demo
    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2.json --set finetune.init=none  # from scratch
    deepspeed --num_gpus 8 launch/finetune.py --deepspeed_config ds_configs/zero2.json \
        --config configs/finetune_ssv2_vit_base.yaml --set finetune.init=runs/ssv2_b
    deepspeed launch/finetune.py --config configs/linprobe_demo.yaml               # linear probe
    deepspeed launch/finetune.py --eval [--checkpoint PATH] ...                     # test pass only

The demo starts from the pretraining demo's run (runs/pretrain_demo); run that first. Runs again with the
same output dir resume from checkpoints/latest unless --no_resume. The multi-view test pass at the end
writes metrics.json and predictions.jsonl into the output dir.
Exit codes: 0 done, 2 bad config/input, 3 non-finite loss, 4 too many unreadable videos.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "ds_configs" / "zero2.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE finetuning (DeepSpeed)")
    p.add_argument("--config", default=None, help="experiment YAML (default: configs/finetune_demo.yaml)")
    p.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON (engine settings)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--output_dir", default=None, help="run directory (default: run.output_dir or runs/<config>)")
    p.add_argument("--no_resume", action="store_true", help="start fresh even if checkpoints/latest exists")
    p.add_argument("--eval", action="store_true", help="only the multi-view test pass of the run's checkpoint")
    p.add_argument("--checkpoint", default=None, help="with --eval: weights to test (default: OUTPUT_DIR/checkpoints)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from motionmae_ds.config import ConfigError
    from motionmae_ds.engine.finetune import (FinetuneTrainer, NonFiniteLossError, TooManyBadVideosError,
                                              evaluate_checkpoint)
    from motionmae_ds.finetune_config import load_finetune_config

    try:
        cfg = load_finetune_config(args.config, args.set)
        if args.eval:
            out = Path(args.output_dir or cfg.run.output_dir or Path("runs") / Path(cfg.source).stem)
            metrics = evaluate_checkpoint(cfg, args.checkpoint or out / "checkpoints", out / "eval")
            print(f"test top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  ({metrics['num_videos']} videos "
                  f"x {metrics['views_per_video']} views) -> {out / 'eval'}", flush=True)
            return 0
        summary = FinetuneTrainer(cfg, args.deepspeed_config, args.output_dir, resume=not args.no_resume).run()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    except TooManyBadVideosError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 4
    if "test" in summary:
        t = summary["test"]
        print(f"done: test top-1 {t['top1']:.2f}  top-5 {t['top5']:.2f}  ({t['num_videos']} videos x "
              f"{t['views_per_video']} views)", flush=True)
    return 0


if __name__ == "__main__":
    from motionmae_ds.engine.failure import guard_peer_failure

    sys.exit(guard_peer_failure(main))
