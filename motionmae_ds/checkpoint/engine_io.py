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
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from motionmae_ds.checkpoint.layout import (
    LATEST,
    OLD_PREFIX,
    TMP_PREFIX,
    first_line,
    prune,
    read_latest,
    read_pointer,
    write_latest,
)
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.errors import CheckpointWriteError
from motionmae_ds.runtime.failure import is_peer_failure

# set on a model whose frozen parameters come from a source its checkpoints' readers can read again (a probe's
# finetune.init, train/finetune.py): its checkpoints then hold the trained parameters alone
FROZEN_SOURCE_ATTR = "frozen_weights_source"


def keeps_frozen(module: nn.Module) -> bool:
    """Whether ``module``'s checkpoints hold its frozen parameters: yes, unless it names where they came from
    (``FROZEN_SOURCE_ATTR``). A probe's checkpoint is then the probe alone (kilobytes beside an encoder's
    hundreds of megabytes); resuming rebuilds the encoder from its source before the engine loads the probe,
    and ``weights.read_weights`` fills it in from the run's finetune.init."""
    return not (getattr(module, FROZEN_SOURCE_ATTR, None) and any(not p.requires_grad for p in module.parameters()))


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _free_space(path: Path) -> str:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "unknown"
    return f"{usage.free / 2**20:.0f} MiB"


def _write_failed(ckpt_dir: Path, tag: str, exc: BaseException) -> CheckpointWriteError:
    previous = read_pointer(ckpt_dir)
    kept = f"the previous checkpoint {ckpt_dir / previous} and latest are intact" if previous else \
        "no earlier checkpoint exists"
    return CheckpointWriteError(
        f"checkpoint {ckpt_dir / tag} could not be written ({first_line(exc)}); {_free_space(ckpt_dir)} free "
        f"there; its partial files were removed and {kept}. Free space (or raise the quota, or set "
        f"run.keep_last) and run the same command to resume")


def _remove_partial(ckpt_dir: Path, tag: str) -> None:
    """What a failed or interrupted save leaves: its temporary tag and ``latest``'s temporary file."""
    shutil.rmtree(ckpt_dir / (TMP_PREFIX + tag), ignore_errors=True)
    for leftover in ckpt_dir.glob(f".{LATEST}.tmp"):
        leftover.unlink(missing_ok=True)


def save(engine: Any, ckpt_dir: str | Path, tag: str, client_state: dict[str, Any], keep_last: int = 0,
         latest: bool = True) -> bool:
    """Save ``tag`` and point ``latest`` at it; an existing ``tag`` is replaced only once the new one is whole.
    ``keep_last > 0`` then deletes all but that many newest step tags. ``latest=False`` (a finetuning run's
    ``best``) writes the tag the same way but leaves ``latest`` and the step tags alone: a resume always continues
    from the newest step.

    A write that fails (no space, quota, file-size limit) raises ``CheckpointWriteError`` on the ranks it failed
    on, each after removing the partial files; an interrupt (Ctrl-C) mid-save removes them too. Either way
    ``latest`` still names the previous, complete checkpoint.

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
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=not keeps_frozen(engine.module))
    except BaseException as exc:
        # a full disk fails every rank's write, each at its own time: each removes the temporary tag after its own
        # failure, so the last one to fail leaves nothing behind (a rank whose write went through waits in
        # DeepSpeed's barrier and learns of the failure as a lost peer; the next start removes what it wrote).
        # A peer lost mid-save is reported as that (runtime/failure.py), not as a failed write
        _remove_partial(ckpt_dir, tag)
        if isinstance(exc, Exception) and not is_peer_failure(exc):
            raise _write_failed(ckpt_dir, tag, exc) from exc
        raise
    dist_utils.barrier()
    if dist_utils.is_main():
        _commit(ckpt_dir, tag, keep_last, latest)
    dist_utils.barrier()
    return True


def _commit(ckpt_dir: Path, tag: str, keep_last: int, latest: bool = True) -> None:
    """Rank 0: the written ``.tmp-TAG`` becomes ``TAG``, then (``latest``) ``latest`` names it and older step tags
    beyond ``keep_last`` go."""
    final, old = ckpt_dir / tag, ckpt_dir / (OLD_PREFIX + tag)
    if final.exists():
        # e.g. a --no_resume run reaching the step of an earlier run; read_latest restores `old` if we
        # die between these two renames
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(ckpt_dir / (TMP_PREFIX + tag), final)
    if not latest:
        if old.exists():
            shutil.rmtree(old)
        return
    try:
        write_latest(ckpt_dir, tag)
    except BaseException as exc:
        # `latest` still names the previous tag: the new one goes, an earlier copy of this tag comes back
        shutil.rmtree(final, ignore_errors=True)
        if old.exists():
            os.replace(old, final)
        _remove_partial(ckpt_dir, tag)
        if isinstance(exc, Exception):
            raise _write_failed(ckpt_dir, tag, exc) from exc
        raise
    if old.exists():
        shutil.rmtree(old)
    prune(ckpt_dir, keep_last, keep=tag)


def load_latest(engine: Any, ckpt_dir: str | Path) -> Optional[dict[str, Any]]:
    """Load model, optimizer and client state from ``latest``; None when there is nothing to resume.
    The returned client state also holds the loaded ``tag``."""
    tag = read_latest(ckpt_dir)
    if tag is None:
        return None
    # a probe's checkpoint lacks the frozen encoder, which the model already holds from its source
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False,
                                                load_module_strict=keeps_frozen(engine.module))
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(ckpt_dir) / tag}")
    client_state = dict(client_state or {})
    client_state["tag"] = tag
    return client_state


def gathered_module(engine: Any, build: Callable[[], nn.Module]) -> Optional[nn.Module]:
    """The engine's model with every weight present, for work one rank does alone (a figure, an export).

    ZeRO-0..2: ``engine.module`` itself, on every rank. ZeRO-3 keeps only a shard of each weight per rank and
    gathers it inside the forward with collectives, so one rank cannot run the model alone: every rank
    must call this (it all-gathers), and rank 0 gets a copy built by ``build`` on the CPU in fp32 holding
    the gathered weights, the other ranks None."""
    if not engine.zero_optimization_partition_weights():
        return engine.module
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        # persistent parameters (below stage3_param_persistence_threshold) stay whole on every rank: gathering
        # and releasing them would break ZeRO-3's record of which parameters the next step finds present
        # (a "tracing error" at the next backward). The status is the same on every rank, so is the branch.
        if param.ds_status == ZeroParamStatus.AVAILABLE:
            if dist_utils.is_main():
                state[name] = param.detach().float().cpu().clone()
            continue
        # one parameter at a time: a ViT-H never needs all of its bf16 weights on one device at once
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if dist_utils.is_main():
                state[name] = param.detach().float().cpu().clone()
    if not dist_utils.is_main():
        return None
    copy = build()
    missing = copy.load_state_dict(state, strict=False).missing_keys
    params = {n for n, _ in copy.named_parameters()}
    if any(k in params for k in missing):
        raise RuntimeError(f"gathered weights miss parameters: {[k for k in missing if k in params][:5]}")
    return copy.eval()
