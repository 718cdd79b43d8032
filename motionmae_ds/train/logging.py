"""Rank-0 run outputs: log.jsonl, TensorBoard scalars, resolved config.yaml, console lines."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from tqdm import tqdm

from motionmae_ds.checkpoint.layout import RUN_CONFIG


class RunLogger:
    """Writes nothing on ranks other than 0, so callers need no rank checks. Console lines work at once; the
    files are opened by ``open`` once the run knows the step it resumes from."""

    def __init__(self, out_dir: str | Path, enabled: bool) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.tb = None
        self.log_path = self.out_dir / "log.jsonl"

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

    def write_config(self, config: dict[str, Any], extra: Optional[dict[str, Any]] = None) -> None:
        if not self.enabled:
            return
        data = dict(config)
        with open(self.out_dir / RUN_CONFIG, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        if extra:
            with open(self.out_dir / "run_info.json", "w") as f:
                json.dump(extra, f, indent=2)

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
        if self.enabled:
            # tqdm owns stdout's last line; write above it
            tqdm.write(message, file=sys.stdout)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
