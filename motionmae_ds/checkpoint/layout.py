"""How a checkpoint directory is laid out, and the one place that reads and writes ``latest``.

A run writes ``RUN/checkpoints/`` (the *checkpoint dir*): one *tag dir* per save (``step00000012``, or
``step00000012_universal`` after a conversion) and ``latest`` naming the one to resume from. A save goes
to ``.tmp-TAG`` first and replaces an existing ``TAG`` through ``.old-TAG`` (engine_io.save), so those
prefixes mark leftovers of a crash. Every path a user may hand us (run dir, checkpoint dir, tag dir) is
turned into (checkpoint dir, tag) by ``resolve``.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

from motionmae_ds.runtime import distributed as dist_utils

# -- DeepSpeed's files ----------------------------------------------------------------------------------
MODEL_STATES = "mp_rank_00_model_states.pt"          # ZeRO-0/1/2: the whole module + our client state
ZERO3_MODEL_STATES = "zero_pp_rank_*_" + MODEL_STATES  # ZeRO-3 writes one per rank and no MODEL_STATES
ZERO_SHARDS = "*zero_pp_rank_*_optim_states.pt"      # fp32 master + Adam moments, one per data-parallel rank
UNIVERSAL_PARAMS = "zero"                             # ds_to_universal: zero/<param>/{fp32,exp_avg,...}.pt
LATEST = "latest"
LATEST_UNIVERSAL = "latest_universal"                 # DeepSpeed's own pointer, written by ds_to_universal

# -- ours -----------------------------------------------------------------------------------------------
RUN_CHECKPOINTS = "checkpoints"   # RUN_DIR/checkpoints
RUN_CONFIG = "config.yaml"        # the run's resolved config, next to its checkpoints
TAG_RE = re.compile(r"^step(\d+)$")
BEST_TAG = "best"                 # a finetuning run's best-by-validation checkpoint: never `latest`, never pruned
BEST_RECORD = "best.json"         # inside it: the epoch, step and validation metric it was saved at
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
UNIVERSAL_SUFFIX = "_universal"

# -- weight names ---------------------------------------------------------------------------------------
WRAPPER_KEYS = ("model", "module", "state_dict")       # where .pth files keep their state dict
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")  # DDP/DeepSpeed, torch.compile, our LinearProbe
ENCODER_PREFIX = "encoder."                            # the encoder inside a pretraining model
# pretraining decoders: ours (space/time heads) and VideoMAE's (decoder, encoder_to_decoder, mask token)
DECODER_PREFIXES = ("space_head.", "time_head.", "decoder.", "encoder_to_decoder.", "mask_token", "decoder_")
HEAD_PREFIXES = ("head.",)
CLASSIFIER_ONLY_PREFIXES = ("fc_norm.", "head.")       # a classifier's pooled-feature norm and head


class CheckpointError(ValueError):
    """A path or file that is not a usable checkpoint; the message names it and the problem in one line."""


class WeightsDoNotFitError(CheckpointError):
    """The source was read, but its weights do not fill the model as the purpose of the load asks; the
    message starts with the source."""


class IncompleteCheckpointError(CheckpointError, FileNotFoundError):
    """``latest`` names a tag whose directory is missing or half written."""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors that wrap a library's exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def is_complete(tag_dir: str | Path) -> bool:
    """DeepSpeed finished writing the model states of ``tag_dir`` (ZeRO-0..2 or ZeRO-3 layout)."""
    tag_dir = Path(tag_dir)
    return (tag_dir / MODEL_STATES).is_file() or any(tag_dir.glob(ZERO3_MODEL_STATES))


def is_universal(tag_dir: str | Path) -> bool:
    """A tag directory written by ``ds_to_universal`` (per-parameter folders under ``zero/``, next to the
    source's model states: ``MODEL_STATES``, or under ZeRO-3 one ``ZERO3_MODEL_STATES`` per rank)."""
    tag_dir = Path(tag_dir)
    return (tag_dir / UNIVERSAL_PARAMS).is_dir() and is_complete(tag_dir)


def has_zero_shards(tag_dir: str | Path) -> bool:
    return any(Path(tag_dir).glob(ZERO_SHARDS))


def saved_world_size(ckpt_dir: str | Path, tag: str) -> Optional[int]:
    """Data-parallel size that wrote ``ckpt_dir/tag``: one ZeRO optimizer shard per rank (None if unknown).
    Read before loading, because DeepSpeed's own refusal of another world size is a traceback."""
    return len(list((Path(ckpt_dir) / tag).glob(ZERO_SHARDS))) or None


# -- latest ---------------------------------------------------------------------------------------------

def read_pointer(ckpt_dir: str | Path, name: str = LATEST) -> Optional[str]:
    """The raw tag in ``ckpt_dir/name`` (``latest`` or DeepSpeed's ``latest_universal``), None without the
    file. For ``latest`` use ``read_latest`` (the run's own directory) or ``resolve`` (anyone's), which
    also check that the tag is whole."""
    pointer = Path(ckpt_dir) / name
    return pointer.read_text().strip() if pointer.is_file() else None


def _check_named_tag(ckpt_dir: Path, tag: str) -> None:
    tag_dir = ckpt_dir / tag
    if not tag_dir.is_dir():
        raise IncompleteCheckpointError(f"{ckpt_dir / LATEST}: names tag '{tag}' but {tag_dir} does not exist")
    if not is_complete(tag_dir):
        raise IncompleteCheckpointError(f"{ckpt_dir / LATEST}: names tag '{tag}' but {tag_dir} is incomplete "
                                        f"(no {MODEL_STATES})")


def read_latest(ckpt_dir: str | Path) -> Optional[str]:
    """The tag ``latest`` names (None without ``latest``); raises IncompleteCheckpointError if that tag is
    not whole. For the run that owns ``ckpt_dir``: it puts back the ``.old-`` copy of a tag whose
    replacement crashed between its two renames. Readers of someone else's run use ``resolve``."""
    ckpt_dir = Path(ckpt_dir)
    tag = read_pointer(ckpt_dir)
    if tag is None:
        return None
    old = ckpt_dir / (OLD_PREFIX + tag)
    if not (ckpt_dir / tag).exists() and old.is_dir():
        try:
            os.replace(old, ckpt_dir / tag)
        except FileNotFoundError:
            pass  # every rank reads latest; another one put it back first
    _check_named_tag(ckpt_dir, tag)
    return tag


def write_latest(ckpt_dir: str | Path, tag: str, name: str = LATEST) -> None:
    """Replace ``ckpt_dir/name`` atomically (fsync, then rename over the old file)."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f".{name}.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)


# -- paths users hand us --------------------------------------------------------------------------------

def list_tags(ckpt_dir: str | Path) -> list[str]:
    """Complete tags in ``ckpt_dir``, leftovers of crashed saves excluded."""
    return sorted(p.name for p in Path(ckpt_dir).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and is_complete(p))


def resolve(path: str | Path, tag: Optional[str] = None) -> tuple[Path, str]:
    """(checkpoint dir, tag) for a run dir, a checkpoint dir (its ``latest``, or ``tag``) or a tag dir.
    Reads only: it may run while the run that owns the directory is saving."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a DeepSpeed checkpoint directory (a file)")
    if (path / RUN_CHECKPOINTS).is_dir():
        path = path / RUN_CHECKPOINTS
    if tag is None and is_complete(path):
        return path.parent, path.name
    available = list_tags(path)
    if tag is None:
        tag = read_pointer(path)
        if tag is None:
            if available:
                raise CheckpointError(f"{path}: no '{LATEST}' file; pass --tag (available: {', '.join(available)})")
            raise CheckpointError(f"{path}: not a DeepSpeed checkpoint directory (no '{LATEST}', no tag "
                                  f"directories with {MODEL_STATES}) and not a run directory (no "
                                  f"{RUN_CHECKPOINTS}/)")
        _check_named_tag(path, tag)
        return path, tag
    if not (path / tag).is_dir():
        listing = f"available: {', '.join(available)}" if available else "no tags there"
        raise CheckpointError(f"{path}: tag '{tag}' not found ({listing})")
    if not is_complete(path / tag):
        raise CheckpointError(f"{path / tag}: incomplete checkpoint (no {MODEL_STATES})")
    return path, tag


def find_run_dir(path: str | Path) -> Optional[Path]:
    """The run directory (the one holding ``config.yaml``) of a run, checkpoint or tag directory or of a file in
    one of them; None when there is none."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / RUN_CONFIG).is_file():
            return candidate
    return None


# -- cleaning up ----------------------------------------------------------------------------------------

def remove_stale(ckpt_dir: str | Path) -> None:
    """Drop leftovers of a save or conversion that crashed (rank 0 only; never touches ``latest``'s tag). An
    ``.old-TAG`` whose ``TAG`` is missing is a replacement that crashed between its two renames: it is put back
    (``best`` is replaced that way at every improvement and no ``latest`` names it)."""
    if not dist_utils.is_main():
        return
    path = Path(ckpt_dir)
    if path.is_dir():
        for child in path.iterdir():
            if not (child.name.startswith((TMP_PREFIX, OLD_PREFIX)) and child.is_dir()):
                continue
            kept = path / child.name[len(OLD_PREFIX):]
            if child.name.startswith(OLD_PREFIX) and not kept.exists() and is_complete(child):
                os.replace(child, kept)
            else:
                shutil.rmtree(child, ignore_errors=True)


def prune(ckpt_dir: str | Path, keep_last: int, keep: str) -> None:
    """Delete all but the newest ``keep_last`` step tags (never ``keep``); ``keep_last <= 0`` keeps all."""
    if keep_last <= 0:
        return
    tags = sorted((int(m.group(1)), p) for p in Path(ckpt_dir).iterdir()
                  if p.is_dir() and (m := TAG_RE.match(p.name)))
    for _, path in tags[:-keep_last]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
