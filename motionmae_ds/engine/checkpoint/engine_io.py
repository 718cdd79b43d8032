"""Saving and resuming a training run through its DeepSpeed engine, safe against a crash while saving.

DeepSpeed writes the tag directory and then ``latest``; a crash in between (or inside the tag directory)
could leave ``latest`` pointing at half a checkpoint. We save under a hidden temporary tag, let rank 0
rename it to the real tag once every rank has written its shard, then replace ``latest`` atomically.
All ranks must call ``save`` and ``load_latest``.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from motionmae_ds.engine import distributed as dist_utils
from motionmae_ds.engine.checkpoint.layout import OLD_PREFIX, TMP_PREFIX, prune, read_latest, write_latest


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(engine: Any, ckpt_dir: str | Path, tag: str, client_state: dict[str, Any], keep_last: int = 0) -> bool:
    """Save ``tag`` and point ``latest`` at it; an existing ``tag`` is replaced only once the new one is whole.
    ``keep_last > 0`` then deletes all but that many newest step tags.

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
        write_latest(ckpt_dir, tag)
        if old.exists():
            shutil.rmtree(old)
        prune(ckpt_dir, keep_last, keep=tag)
    dist_utils.barrier()
    return True


def load_latest(engine: Any, ckpt_dir: str | Path) -> Optional[dict[str, Any]]:
    """Load model, optimizer and client state from ``latest``; None when there is nothing to resume.
    The returned client state also holds the loaded ``tag``."""
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
