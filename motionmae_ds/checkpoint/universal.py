"""Resume at another world size through DeepSpeed's universal checkpoint format.

A ZeRO-2 checkpoint stores the fp32 master weights and Adam moments as one flat partition per rank, so it
only loads at the data-parallel size that wrote it. ``ds_to_universal`` rewrites it as one folder per
parameter (``TAG_universal/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``) which any world size can load
once the DeepSpeed config says ``"checkpoint": {"load_universal": true}``. ZeRO-3 checkpoints (per-rank
model states, no ``mp_rank_00_model_states.pt``) convert the same way; DeepSpeed then reads rank 0's model
states at any world size.

``to_universal`` converts next to the source tag under a hidden temporary name (``remove_stale`` clears
such leftovers), renames it when complete, then replaces ``latest`` atomically, so a crash at any point
leaves ``latest`` naming a whole checkpoint. ``prepare_resume`` derives the ``load_universal`` switch from
what ``latest`` names: a resumed run writes ordinary ZeRO checkpoints again, and the next auto-resume must
read those the ordinary way.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from motionmae_ds.checkpoint.layout import (
    LATEST_UNIVERSAL,
    MODEL_STATES,
    OLD_PREFIX,
    TMP_PREFIX,
    UNIVERSAL_SUFFIX,
    ZERO3_MODEL_STATES,
    ZERO_SHARDS,
    CheckpointError,
    has_zero_shards,
    is_complete,
    is_universal,
    read_latest,
    read_pointer,
    resolve,
    write_latest,
)


def prepare_resume(ckpt_dir: str | Path, ds_config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``ds_config`` whose ``checkpoint.load_universal`` says whether ``ckpt_dir/latest`` names a
    universal checkpoint. Call before ``deepspeed.initialize``; an explicit value in the JSON is replaced,
    because it can only be right for one of the checkpoints a run meets."""
    out = copy.deepcopy(ds_config)
    tag = read_latest(ckpt_dir)
    section = out.get("checkpoint")
    section = dict(section) if isinstance(section, dict) else {}
    section["load_universal"] = tag is not None and is_universal(Path(ckpt_dir) / tag)
    out["checkpoint"] = section
    return out


def rescale_micro_in_epoch(micro_in_epoch: int, saved_world: int, saved_micro: int, world: int,
                           micro: int) -> int:
    """The engine's per-rank micro-batch position, moved to a new world size / micro batch by counting the
    samples the epoch has consumed. Raises CheckpointError (a ValueError) when the new layout cannot stop at
    that sample."""
    samples = micro_in_epoch * saved_micro * saved_world
    per_micro = micro * world
    if samples % per_micro:
        raise CheckpointError(f"checkpoint stopped after {samples} samples of the epoch ({saved_world} ranks x "
                              f"{saved_micro} per micro-batch), not a multiple of {world} ranks x {micro}; resume "
                              f"at an epoch boundary or pick a batch layout that divides it")
    return samples // per_micro


def to_universal(ckpt_dir: str | Path, tag: Optional[str] = None, output_dir: Optional[str | Path] = None,
                 force: bool = False, workers: Optional[int] = None) -> Path:
    """Convert ``ckpt_dir/tag`` (default: ``latest``; ``ckpt_dir`` may be any path ``resolve`` takes) into
    ``output_dir/TAG_universal`` (default output_dir: the checkpoint dir) and point ``output_dir/latest``
    at it. Returns the new tag directory."""
    ckpt_dir, tag = resolve(ckpt_dir, tag)
    output_dir = Path(output_dir) if output_dir is not None else ckpt_dir
    src = ckpt_dir / tag
    if is_universal(src):
        raise CheckpointError(f"{src}: already a universal checkpoint")
    if not is_complete(src) or not has_zero_shards(src):
        raise CheckpointError(f"{src}: not a ZeRO checkpoint ({MODEL_STATES} or, under ZeRO-3, {ZERO3_MODEL_STATES}, "
                              f"and {ZERO_SHARDS} expected)")
    new_tag = tag + UNIVERSAL_SUFFIX
    final = output_dir / new_tag
    if final.exists() and not force:
        raise CheckpointError(f"{final}: exists (pass --force to replace it)")
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (TMP_PREFIX + new_tag)
    shutil.rmtree(tmp, ignore_errors=True)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not is_universal(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        # ds_to_universal wrote latest_universal naming the temporary folder; it is useless now
        _drop_stale_latest_universal(output_dir, tmp.name)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise CheckpointError(f"{src}: ds_to_universal failed (exit {proc.returncode}): {last.strip()}")
    if final.exists():
        old = output_dir / (OLD_PREFIX + new_tag)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    write_latest(output_dir, new_tag, LATEST_UNIVERSAL)
    write_latest(output_dir, new_tag)
    return final


def _drop_stale_latest_universal(output_dir: Path, tmp_name: str) -> None:
    if read_pointer(output_dir, LATEST_UNIVERSAL) == tmp_name:
        (output_dir / LATEST_UNIVERSAL).unlink()
