"""Resume at another world size through DeepSpeed's universal checkpoint format.

A ZeRO-2 checkpoint stores the fp32 master weights and Adam moments as one flat partition per rank, so it
only loads at the data-parallel size that wrote it. ``ds_to_universal`` rewrites it as one folder per
parameter (``TAG_universal/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``) which any world size can load
once the DeepSpeed config says ``"checkpoint": {"load_universal": true}``. ZeRO-3 checkpoints (per-rank
model states, no ``mp_rank_00_model_states.pt``) convert the same way; DeepSpeed then reads rank 0's model
states at any world size.

``to_universal`` never writes into the run it reads: it makes a run directory of its own (default: the source
run's + ``_universal``) holding the converted tag, ``latest`` naming it and a copy of the source run's record and
log, all under a hidden temporary name renamed into place when whole, so a crash leaves no half copy and the
source run's ``latest`` keeps naming what it named. Training with ``--output_dir`` set to that directory resumes
the run there, at any world size. ``prepare_resume`` derives the ``load_universal`` switch from what ``latest``
names: a resumed run writes ordinary ZeRO checkpoints again, and the next auto-resume must read those the
ordinary way.
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
    RUN_CHECKPOINTS,
    RUN_CONFIG,
    TAG_RE,
    TMP_PREFIX,
    UNIVERSAL_SUFFIX,
    ZERO3_MODEL_STATES,
    ZERO_SHARDS,
    CheckpointError,
    find_run_dir,
    has_zero_shards,
    is_complete,
    is_universal,
    read_latest,
    resolve,
    write_latest,
)
from motionmae_ds.checkpoint.run_record import RECORD_FILES, RUN_LOG, RunRecord


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


def universal_output(ckpt_dir: Path) -> tuple[Optional[Path], Path]:
    """(the run directory of ``ckpt_dir`` or None, the default directory of its universal copy: the run's name +
    ``_universal``, beside it)."""
    run_dir = find_run_dir(ckpt_dir) or (ckpt_dir.parent if ckpt_dir.name == RUN_CHECKPOINTS else None)
    base = run_dir or ckpt_dir
    return run_dir, base.with_name(base.name + UNIVERSAL_SUFFIX)


def _inside(path: Path, other: Path) -> bool:
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def to_universal(ckpt_dir: str | Path, tag: Optional[str] = None, output_dir: Optional[str | Path] = None,
                 force: bool = False, workers: Optional[int] = None) -> Path:
    """Convert ``ckpt_dir/tag`` (default: ``latest``; ``ckpt_dir`` may be any path ``resolve`` takes) into a run
    directory of its own, ``output_dir`` (default: the source run's directory + ``_universal``, beside it):
    ``OUT/checkpoints/TAG_universal`` with ``latest`` naming it, and the source run's record (config.yaml,
    run_info.json, history.jsonl with a "converted" event) and log.jsonl, so that the training command with
    ``--output_dir OUT`` resumes the run at any world size. The source run is only read. Returns the new tag
    directory."""
    ckpt_dir, tag = resolve(ckpt_dir, tag)
    src = ckpt_dir / tag
    source_run, default = universal_output(ckpt_dir)
    out = Path(output_dir) if output_dir is not None else default
    for inside in (ckpt_dir, source_run):
        if inside is not None and (_inside(out, inside) or _inside(inside, out)):
            raise CheckpointError(f"--output {out}: the universal copy goes to a directory of its own, not into "
                                  f"(or above) the run it converts ({inside}); pass another --output (default: "
                                  f"{default})")
    if is_universal(src):
        raise CheckpointError(f"{src}: already a universal checkpoint")
    if not is_complete(src) or not has_zero_shards(src):
        raise CheckpointError(f"{src}: not a ZeRO checkpoint ({MODEL_STATES} or, under ZeRO-3, {ZERO3_MODEL_STATES}, "
                              f"and {ZERO_SHARDS} expected)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CheckpointError(f"{out}: exists (pass --force to replace it)")
    new_tag = tag + UNIVERSAL_SUFFIX
    # everything is made under a temporary name beside OUT and renamed into place when whole
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_run = out.parent / (TMP_PREFIX + out.name)
    shutil.rmtree(tmp_run, ignore_errors=True)
    tmp_ckpt = tmp_run / RUN_CHECKPOINTS
    tmp_ckpt.mkdir(parents=True)
    try:
        _convert(src, tmp_ckpt / new_tag, workers)
        write_latest(tmp_ckpt, new_tag, LATEST_UNIVERSAL)
        write_latest(tmp_ckpt, new_tag)
        if source_run is not None:
            _copy_record(source_run, tmp_run, src, new_tag)
        if out.exists():
            old = out.parent / (OLD_PREFIX + out.name)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp_run, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_run, out)
    finally:
        shutil.rmtree(tmp_run, ignore_errors=True)
    return out / RUN_CHECKPOINTS / new_tag


def _convert(src: Path, final: Path, workers: Optional[int]) -> None:
    """``ds_to_universal`` of the tag directory ``src`` into ``final`` (through a temporary folder beside it)."""
    tmp = final.parent / (TMP_PREFIX + final.name)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not is_universal(tmp):
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise CheckpointError(f"{src}: ds_to_universal failed (exit {proc.returncode}): {last.strip()}")
    os.replace(tmp, final)


def _copy_record(source_run: Path, out: Path, src: Path, new_tag: str) -> None:
    """The source run's record and log, and a "converted" event in the copy's history."""
    for name in (*RECORD_FILES, RUN_LOG):
        if (source_run / name).is_file():
            shutil.copy2(source_run / name, out / name)
    if (out / RUN_CONFIG).is_file():
        match = TAG_RE.match(src.name)
        RunRecord(out).append({"event": "converted", "from": str(src), "tag": new_tag,
                               "step": int(match.group(1)) if match else None})
