"""What the training entry points share: their common arguments and how a failure becomes one line and an exit code.

Exit codes (the same for pretraining, finetuning and evaluation):
  0 done, 2 bad config or input, 3 non-finite loss, 4 too many unreadable videos,
  5 a peer rank was lost (``runtime/failure.py``), 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint
  (``runtime/preemption.py``): run the same command again to resume.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from motionmae_ds.config import REPO_ROOT, ConfigError
from motionmae_ds.data.datasets import DataLoadError
from motionmae_ds.data.decode.torchcodec import BackendUnavailable
from motionmae_ds.runtime.errors import (
    EXIT_BAD_DATA,
    EXIT_CONFIG,
    EXIT_NON_FINITE,
    EXIT_PREEMPTED,
    CheckpointWriteError,
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

# the shell's code for a process ended by SIGINT (128 + 2)
EXIT_INTERRUPTED = 130
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
    # on a terminal the line starts on a line of its own, not after a progress bar's carriage return
    print(("\n" if sys.stderr.isatty() else "") + message, file=sys.stderr, flush=True)
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


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# what c10d's TCPStore says when rank 0 cannot listen on MASTER_PORT
_BUSY_PORT_SIGNS = ("eaddrinuse", "address already in use", "failed to listen")


def is_busy_port(exc: BaseException) -> bool:
    """The rendezvous store could not listen on its port (another run holds it), not a lost peer."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _BUSY_PORT_SIGNS)


def busy_port_message() -> str:
    port, addr = os.environ.get("MASTER_PORT", "?"), os.environ.get("MASTER_ADDR", "?")
    return (f"the rendezvous port {port} on {addr} is already in use (another run on this machine?); pass a free "
            f"one to the launcher with --master_port (deepspeed --master_port N ...)")


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
            return _fail(f"error: unreadable data: {_last_line(exc)}", EXIT_BAD_DATA)
        except Preempted as exc:
            return _fail(f"stopped: {exc}; run the same command to resume", EXIT_PREEMPTED)
        except BackendUnavailable as exc:
            # from a loader worker the message carries the worker's traceback; its last line is ours
            return _fail(f"setup error: {_last_line(exc)}", EXIT_CONFIG)
        except CheckpointWriteError as exc:
            return _fail(f"error: {exc}", EXIT_CONFIG)
        except Exception as exc:
            if not is_busy_port(exc):
                raise
            return _fail(f"error: {busy_port_message()}", EXIT_CONFIG)
        except KeyboardInterrupt:
            # Ctrl-C: at once, no checkpoint; a save it cut short removed its partial files (checkpoint/engine_io.py)
            return _fail("interrupted: stopped without writing a checkpoint; checkpoints/latest still names the last "
                         "complete one", EXIT_INTERRUPTED)

    return guard_peer_failure(guarded)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def output_dir_of(cfg: object, given: str | Path | None, default_stem: str) -> Path:
    """The run directory a command names: ``--output_dir``, else ``run.output_dir``, else runs/<config stem>
    (``default_stem`` for a config not read from a YAML file). The trainer and the launchers both use this."""
    source = getattr(cfg, "source", "")
    stem = Path(source).stem if source.endswith((".yaml", ".yml")) else default_stem
    return Path(given or cfg.run.output_dir or Path("runs") / stem)


# below this much free space a run would fail at its first checkpoint (or log line): refuse at the start
MIN_FREE_BYTES = 64 * 2**20


def check_output_dir(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Refuse a run directory the run could not write into, before any rank builds a model: a path that is a
    file (or under one), a directory this user may not write, or a file system with less than ``min_free_bytes``
    free. Raises ConfigError (exit 2) naming the path and what to do."""
    path = Path(path)
    existing = path
    while not existing.exists():  # the first ancestor that exists is where the run's directories get made
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise ConfigError(f"output directory {path} {where}, not a directory; pass another with --output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {path}: {existing} is not writable by this user; pass another with "
                          f"--output_dir")
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise ConfigError(f"output directory {path}: only {free / 2**20:.1f} MiB free on its file system (at least "
                          f"{min_free_bytes / 2**20:.0f} MiB needed for logs and checkpoints); free space or pass "
                          f"another --output_dir")


def metrics_line(what: str, metrics: dict, where: object = None) -> str:
    """``what top-1 .. top-5 .. (N videos x V views)`` and, when given, ``-> where``."""
    line = (f"{what} top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  ({metrics['num_videos']} videos x "
            f"{metrics['views_per_video']} views)")
    return f"{line} -> {where}" if where is not None else line
