"""DeepSpeed checkpoints that survive a crash while saving.

DeepSpeed writes the tag directory and then ``latest``; a crash in between (or inside the tag directory)
could leave ``latest`` pointing at half a checkpoint. We save under a hidden temporary tag, let rank 0
rename it to the real tag once every rank has written its shard, then replace ``latest`` atomically.
All ranks must call ``save`` and ``load_latest``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from motionmae_ds.engine import distributed as dist_utils

TAG_RE = re.compile(r"^step(\d+)$")
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def read_latest(ckpt_dir: str | Path) -> Optional[str]:
    """The tag ``latest`` names, if it exists and its directory is complete."""
    latest = Path(ckpt_dir) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    old = Path(ckpt_dir) / (OLD_PREFIX + tag)
    if not (Path(ckpt_dir) / tag).exists() and old.is_dir():
        # a crash while replacing a tag by a newer save of the same tag: the old one is still whole
        os.replace(old, Path(ckpt_dir) / tag)
    if not (Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt").is_file():
        raise FileNotFoundError(f"{latest} names tag '{tag}' but {Path(ckpt_dir) / tag} is incomplete")
    return tag


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    tmp = ckpt_dir / ".latest.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / "latest")


def remove_stale(ckpt_dir: str | Path) -> None:
    """Drop leftovers of a save that crashed (rank 0 only; never touches ``latest``'s tag)."""
    if not dist_utils.is_main():
        return
    path = Path(ckpt_dir)
    if path.is_dir():
        for child in path.iterdir():
            if child.name.startswith((TMP_PREFIX, OLD_PREFIX)) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def _prune(ckpt_dir: Path, keep_last: int, keep: str) -> None:
    if keep_last <= 0:
        return
    tags = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                  if p.is_dir() and (m := TAG_RE.match(p.name)))
    for _, path in tags[:-keep_last]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(engine: Any, ckpt_dir: str | Path, tag: str, client_state: dict[str, Any], keep_last: int = 0) -> bool:
    """Save ``tag`` and point ``latest`` at it; an existing ``tag`` is replaced only once the new one is whole.

    Returns True (kept for callers written against the earlier skip-if-latest behaviour).
    """
    ckpt_dir = Path(ckpt_dir)
    if dist_utils.is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    tmp_tag = TMP_PREFIX + tag
    if dist_utils.is_main() and (ckpt_dir / tmp_tag).exists():
        shutil.rmtree(ckpt_dir / tmp_tag)
    dist_utils.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    dist_utils.barrier()
    if dist_utils.is_main():
        final, old = ckpt_dir / tag, ckpt_dir / (OLD_PREFIX + tag)
        if final.exists():
            # e.g. a --no_resume run reaching the step of an earlier run; read_latest restores `old` if we
            # die between these two renames
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(ckpt_dir / tmp_tag, final)
        _write_latest(ckpt_dir, tag)
        if old.exists():
            shutil.rmtree(old)
        _prune(ckpt_dir, keep_last, keep=tag)
    dist_utils.barrier()
    return True


def saved_world_size(ckpt_dir: str | Path, tag: str) -> Optional[int]:
    """Data-parallel size that wrote ``ckpt_dir/tag``: one ZeRO optimizer shard per rank (None if unknown).
    Read before loading, because DeepSpeed's own refusal of another world size is a traceback."""
    shards = list((Path(ckpt_dir) / tag).glob("*zero_pp_rank_*_optim_states.pt"))
    return len(shards) or None


def load_latest(engine: Any, ckpt_dir: str | Path) -> Optional[dict[str, Any]]:
    """Load model, optimizer and client state from ``latest``; None when there is nothing to resume."""
    tag = read_latest(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(ckpt_dir) / tag}")
    client_state = dict(client_state or {})
    client_state["tag"] = tag
    return client_state
