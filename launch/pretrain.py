"""MotionMAE pretraining under DeepSpeed.

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2.json          # embedded demo
    deepspeed --num_gpus 2 launch/pretrain.py --deepspeed_config ds_configs/zero2.json \
        --config configs/pretrain_ssv2_vit_base.yaml --set run.output_dir=runs/ssv2_b
    python launch/pretrain.py ...                                                   # one process, no launcher

Runs again with the same output dir resume from its checkpoints/latest unless --no_resume.
Exit codes: 0 done, 2 bad config/input, 3 non-finite loss, 4 too many unreadable videos.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "ds_configs" / "zero2.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MotionMAE pretraining (DeepSpeed)")
    p.add_argument("--config", default=None, help="experiment YAML (default: configs/pretrain_demo.yaml)")
    p.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON (engine settings)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--output_dir", default=None, help="run directory (default: run.output_dir or runs/<config>)")
    p.add_argument("--no_resume", action="store_true", help="start fresh even if checkpoints/latest exists")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    return p.parse_args(argv)


def _fail(message: str, code: int) -> int:
    """Print one line and leave at once: after a failure mid-run, interpreter shutdown with a live process
    group and DeepSpeed engine was seen to stall for minutes under the launcher; outputs are already
    flushed and closed (log.jsonl per line, TensorBoard in the trainer's finally)."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from motionmae_ds.config import ConfigError, load_config
    from motionmae_ds.data.datasets import DataLoadError
    from motionmae_ds.engine.pretrain import NonFiniteLossError, TooManyBadVideosError, run_pretraining

    try:
        cfg = load_config(args.config, args.set)
        summary = run_pretraining(cfg, args.deepspeed_config, args.output_dir, resume=not args.no_resume)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", 2)
    except NonFiniteLossError as exc:
        return _fail(f"error: {exc}", 3)
    except TooManyBadVideosError as exc:
        return _fail(f"error: {exc}", 4)
    except DataLoadError as exc:
        # re-raised from a loader worker, the message carries the worker's traceback; its last line is ours
        last = [line for line in str(exc).splitlines() if line.strip()][-1]
        return _fail(f"error: unreadable data: {last}", 4)
    if summary.get("first_loss") is not None and os.environ.get("RANK", "0") == "0":
        print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    from motionmae_ds.engine.failure import guard_peer_failure

    sys.exit(guard_peer_failure(main))
