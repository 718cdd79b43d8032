"""What the training entry points share: their common arguments and how a failure becomes one line and an exit code.

Exit codes (the same for pretraining, finetuning and evaluation):
  0 done, 2 bad config or input, 3 non-finite loss, 4 too many unreadable videos,
  5 a peer rank was lost (``runtime/failure.py``), 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint
  (``runtime/preemption.py``): run the same command again to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from motionmae_ds.config import REPO_ROOT, ConfigError
from motionmae_ds.data.datasets import DataLoadError
from motionmae_ds.runtime.errors import (
    EXIT_BAD_DATA,
    EXIT_CONFIG,
    EXIT_NON_FINITE,
    EXIT_PREEMPTED,
    NonFiniteLossError,
    TooManyBadVideosError,
)
from motionmae_ds.runtime.failure import guard_peer_failure
from motionmae_ds.runtime.flags import (
    add_config,
    add_deepspeed_config,
    add_local_rank,
    add_option,
    add_output_dir,
    add_set,
)
from motionmae_ds.runtime.preemption import Preempted

DEFAULT_DS_CONFIG = REPO_ROOT / "ds_configs" / "zero2.json"


def training_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    """The arguments every training entry point takes."""
    p = argparse.ArgumentParser(description=description)
    add_config(p, default_config)
    add_deepspeed_config(p, default=str(DEFAULT_DS_CONFIG))
    add_set(p)
    add_output_dir(p, "run directory (default: run.output_dir or runs/<config>)")
    add_option(p, "--no_resume", action="store_true", help="start fresh even if checkpoints/latest exists")
    add_local_rank(p)
    return p


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


def _leave(code: int) -> int:
    """A finished run leaves without interpreter teardown when a process group exists: tearing down a live
    gloo group and DeepSpeed engine at exit sometimes aborts the process after its work is done ("terminate
    called without an active exception", exit 250), which the launcher reports as a failed run. Everything is
    written by then (checkpoints renamed into place, log.jsonl per line, TensorBoard closed in the trainer)."""
    sys.stdout.flush()
    sys.stderr.flush()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        os._exit(code)
    return code


def run_entry(body: Callable[[], int]) -> int:
    """Run ``body`` and map our errors to one line on stderr and the documented exit code."""
    def guarded() -> int:
        try:
            return _leave(body())
        except ConfigError as exc:
            return _fail(f"config error: {exc}", EXIT_CONFIG)
        except NonFiniteLossError as exc:
            return _fail(f"error: {exc}", EXIT_NON_FINITE)
        except TooManyBadVideosError as exc:
            return _fail(f"error: {exc}", EXIT_BAD_DATA)
        except DataLoadError as exc:
            # re-raised from a loader worker, the message carries the worker's traceback; its last line is ours
            last = [line for line in str(exc).splitlines() if line.strip()][-1]
            return _fail(f"error: unreadable data: {last}", EXIT_BAD_DATA)
        except Preempted as exc:
            return _fail(f"stopped: {exc}; run the same command to resume", EXIT_PREEMPTED)

    return guard_peer_failure(guarded)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def output_dir_of(cfg: object, given: str | Path | None, default_stem: str) -> Path:
    """The run directory a command names: ``--output_dir``, else ``run.output_dir``, else runs/<config stem>
    (``default_stem`` for a config not read from a YAML file). The trainer and the launchers both use this."""
    source = getattr(cfg, "source", "")
    stem = Path(source).stem if source.endswith((".yaml", ".yml")) else default_stem
    return Path(given or cfg.run.output_dir or Path("runs") / stem)


def metrics_line(what: str, metrics: dict, where: object = None) -> str:
    """``what top-1 .. top-5 .. (N videos x V views)`` and, when given, ``-> where``."""
    line = (f"{what} top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  ({metrics['num_videos']} videos x "
            f"{metrics['views_per_video']} views)")
    return f"{line} -> {where}" if where is not None else line
