"""Resume at another world size through DeepSpeed's universal checkpoint format.

A ZeRO-2 checkpoint stores the fp32 master weights and Adam moments as one flat partition per rank, so it
only loads at the data-parallel size that wrote it. ``ds_to_universal`` rewrites it as one folder per
parameter (``TAG_universal/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``) which any world size can load
once the DeepSpeed config says ``"checkpoint": {"load_universal": true}``.

``to_universal`` converts next to the source tag under a hidden temporary name (the engine's
``remove_stale`` clears such leftovers), renames it when complete, then replaces ``latest`` atomically, so a
crash at any point leaves ``latest`` naming a whole checkpoint. ``prepare_resume`` derives the
``load_universal`` switch from what ``latest`` names: a resumed run writes ordinary ZeRO checkpoints again,
and the next auto-resume must read those the ordinary way.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

UNIVERSAL_SUFFIX = "_universal"
# the engine's checkpoint.remove_stale deletes leftovers with these prefixes, and its read_latest puts an
# ".old-" directory back when a crash came between the two renames of a replacement
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
MODEL_STATES = "mp_rank_00_model_states.pt"


class UniversalConversionError(ValueError):
    """The checkpoint cannot be turned into a universal one; the message names the path and the problem."""


def is_universal(tag_dir: str | Path) -> bool:
    """A tag directory written by ``ds_to_universal`` (per-parameter folders under ``zero/``)."""
    tag_dir = Path(tag_dir)
    return (tag_dir / "zero").is_dir() and (tag_dir / MODEL_STATES).is_file()


def latest_tag(ckpt_dir: str | Path) -> Optional[str]:
    latest = Path(ckpt_dir) / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def write_latest(ckpt_dir: str | Path, tag: str, name: str = "latest") -> None:
    """Replace ``ckpt_dir/name`` atomically (fsync, then rename over the old file)."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f".{name}.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)


def prepare_resume(ckpt_dir: str | Path, ds_config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``ds_config`` whose ``checkpoint.load_universal`` says whether ``ckpt_dir/latest`` names a
    universal checkpoint. Call before ``deepspeed.initialize``; an explicit value in the JSON is replaced,
    because it can only be right for one of the checkpoints a run meets."""
    out = copy.deepcopy(ds_config)
    tag = latest_tag(ckpt_dir)
    universal = tag is not None and is_universal(Path(ckpt_dir) / tag)
    section = out.get("checkpoint")
    section = dict(section) if isinstance(section, dict) else {}
    section["load_universal"] = universal
    out["checkpoint"] = section
    return out


def rescale_micro_in_epoch(micro_in_epoch: int, saved_world: int, saved_micro: int, world: int,
                           micro: int) -> int:
    """The engine's per-rank micro-batch position, moved to a new world size / micro batch by counting the
    samples the epoch has consumed. Raises ValueError when the new layout cannot stop at that sample."""
    samples = micro_in_epoch * saved_micro * saved_world
    per_micro = micro * world
    if samples % per_micro:
        raise ValueError(f"checkpoint stopped after {samples} samples of the epoch ({saved_world} ranks x "
                         f"{saved_micro} per micro-batch), not a multiple of {world} ranks x {micro}; resume at "
                         f"an epoch boundary or pick a batch layout that divides it")
    return samples // per_micro


def to_universal(ckpt_dir: str | Path, tag: Optional[str] = None, output_dir: Optional[str | Path] = None,
                 force: bool = False, workers: Optional[int] = None) -> Path:
    """Convert ``ckpt_dir/tag`` (default: ``latest``) into ``output_dir/TAG_universal`` (default output_dir:
    ``ckpt_dir``) and point ``output_dir/latest`` at it. Returns the new tag directory."""
    ckpt_dir = Path(ckpt_dir)
    output_dir = Path(output_dir) if output_dir is not None else ckpt_dir
    if tag is None:
        tag = latest_tag(ckpt_dir)
        if tag is None:
            raise UniversalConversionError(f"{ckpt_dir}: no 'latest' file; pass --tag")
    src = ckpt_dir / tag
    if not src.is_dir():
        raise UniversalConversionError(f"{src}: tag '{tag}' not found in {ckpt_dir}")
    if is_universal(src):
        raise UniversalConversionError(f"{src}: already a universal checkpoint")
    if not (src / MODEL_STATES).is_file() or not any(src.glob("*zero_pp_rank_*optim_states.pt")):
        raise UniversalConversionError(f"{src}: not a ZeRO checkpoint ({MODEL_STATES} and "
                                       f"*zero_pp_rank_*optim_states.pt expected)")
    new_tag = tag + UNIVERSAL_SUFFIX
    final = output_dir / new_tag
    if final.exists() and not force:
        raise UniversalConversionError(f"{final}: exists (pass --force to replace it)")
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
        raise UniversalConversionError(f"{src}: ds_to_universal failed (exit {proc.returncode}): {last.strip()}")
    if final.exists():
        old = output_dir / (OLD_PREFIX + new_tag)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    write_latest(output_dir, new_tag, "latest_universal")
    write_latest(output_dir, new_tag)
    return final


def _drop_stale_latest_universal(output_dir: Path, tmp_name: str) -> None:
    path = output_dir / "latest_universal"
    if path.is_file() and path.read_text().strip() == tmp_name:
        path.unlink()
