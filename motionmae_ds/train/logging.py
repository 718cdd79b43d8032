"""Rank-0 run outputs: log.jsonl, TensorBoard scalars, console lines, and the progress shown while an epoch runs.

The console reads the same in a terminal and in a file (SLURM, nohup, CI): one line per epoch on stdout (epoch,
step, the loss of each head, lr, clips/s, data wait, elapsed and remaining time) and a last line with the wall
time. While an epoch runs, a terminal (stderr a TTY) shows a tqdm bar; a file gets no carriage-return updates but
a plain progress line every ``PROGRESS_EVERY_S`` seconds, so a log file grows with time, not with steps.
The run's record (config.yaml, run_info.json, history.jsonl) is ``checkpoint/run_record.py``'s.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from tqdm import tqdm

from motionmae_ds.checkpoint.run_record import RUN_LOG

# a file's progress lines: one per this many seconds of an epoch (a terminal has its bar)
PROGRESS_EVERY_S = 60.0


def on_terminal() -> bool:
    """Progress bars only where a person watches: stderr is a terminal."""
    return sys.stderr.isatty()


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def epoch_line(epoch: int, epochs: int, step: int, steps: int, stats: Mapping[str, float], lr: float,
               clips_per_s: float, data_wait: float, elapsed: float, remaining: Optional[float]) -> str:
    """The console's line for one epoch: the statistics are averages over the epoch's micro-steps (in this
    process: from the resume on), the rate and the data wait over its wall time."""
    values = " ".join(f"{name} {_number(value)}" for name, value in stats.items())
    left = clock(remaining) if remaining is not None else "?"
    return (f"epoch {epoch + 1}/{epochs} step {step}/{steps} {values} lr {lr:.3g} clips/s {clips_per_s:.1f} "
            f"data_wait {data_wait:.0%} elapsed {clock(elapsed)} remaining {left}")


class Progress:
    """An epoch's progress on rank 0: a tqdm bar on a terminal, else a plain line every ``every_s`` seconds."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, every_s: float = PROGRESS_EVERY_S
                 ) -> None:
        self.total, self.done, self.desc = total, initial, desc
        self.enabled, self.every_s = enabled, every_s
        self.postfix: dict[str, str] = {}
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False) \
            if enabled and on_terminal() else None
        self.started = self.last_line = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last_line >= self.every_s:
            self.last_line = now
            values = "".join(f" {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.done}/{self.total} micro-steps{values} ({clock(now - self.started)} in this "
                  f"epoch)", file=sys.stdout, flush=True)

    def set_postfix(self, **values: str) -> None:
        self.postfix = dict(values)
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunLogger:
    """Writes nothing on ranks other than 0, so callers need no rank checks. Console lines work at once; the
    files are opened by ``open`` once the run knows the step it resumes from."""

    def __init__(self, out_dir: str | Path, enabled: bool) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.tb = None
        self.log_path = self.out_dir / RUN_LOG

    def open(self, resume_step: int = 0) -> "RunLogger":
        """Drop what a killed run logged after ``resume_step`` (everything on a fresh start) and start TensorBoard."""
        if not self.enabled:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if resume_step == 0 and (self.out_dir / "tb").is_dir():
            # a fresh start in an old run dir: old curves would overlay the new ones
            shutil.rmtree(self.out_dir / "tb")
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint we resume from
            self.tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is in requirements; keep training if an install lacks it
            self.tb = None
        return self

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint, so the log reads as one run."""
        if not self.log_path.exists():
            return
        if step == 0:
            self.log_path.unlink()
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
            if rec.get("step", 0) <= step:
                kept.append(line)
        self.log_path.write_text("".join(k + "\n" for k in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.flush()

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if on_terminal():
            # a tqdm bar may own the terminal's last line; write above it
            tqdm.write(message, file=sys.stdout)
        else:
            print(message, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
