"""When a run saves, what it keeps, and what it may resume: the checkpoint side of a training run.

The loop hands the manager plain dicts (its client state) and asks two questions, ``step_due`` after each
optimizer step and ``epoch_due`` after each epoch; the manager writes through ``engine_io.save`` (crash-safe,
keep-last pruning) and, on resume, checks that the checkpoint's world size is this run's. A universal checkpoint
(``launch/convert_checkpoint.py --format universal``) may be loaded at another world size or micro batch; its
``micro_in_epoch`` is then moved to the new layout by counting the samples the epoch consumed.

Client-state keys the manager owns: ``world_size``, ``micro_batch`` (per rank) and ``rng``; a loaded state also
holds the ``tag`` it came from. Everything else is the caller's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from motionmae_ds.checkpoint.engine_io import load_latest, rng_state, save, set_rng_state
from motionmae_ds.checkpoint.layout import CheckpointError, read_latest, remove_stale, saved_world_size, tag_for
from motionmae_ds.checkpoint.universal import prepare_resume, rescale_micro_in_epoch
from motionmae_ds.config import ConfigError
from motionmae_ds.runtime import distributed as dist_utils


class CheckpointManager:
    """Checkpoints of one run in ``ckpt_dir``. ``world`` ranks of ``micro`` clips per micro-batch write them;
    ``save_every_steps`` / ``save_every_epochs`` (0: never) set the cadence, the last epoch always saves;
    ``keep_last`` > 0 deletes all but that many newest step tags."""

    def __init__(self, ckpt_dir: str | Path, world: int, micro: int, epochs: int, save_every_steps: int = 0,
                 save_every_epochs: int = 0, keep_last: int = 0, resume: bool = True) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.world, self.micro, self.epochs = world, micro, epochs
        self.save_every_steps, self.save_every_epochs = save_every_steps, save_every_epochs
        self.keep_last, self.resume = keep_last, resume
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from

    # -- cadence --------------------------------------------------------------------------------------
    def step_due(self, step: int) -> bool:
        """After optimizer step ``step`` inside an epoch (not its last one)."""
        return bool(self.save_every_steps) and step % self.save_every_steps == 0 and step != self.saved_step

    def epoch_due(self, epoch: int, step: int) -> bool:
        """After epoch ``epoch`` (0-based) ended at ``step``; a step checkpoint of the same step suffices."""
        if step == self.saved_step:
            return False
        return epoch + 1 == self.epochs or bool(self.save_every_epochs and (epoch + 1) % self.save_every_epochs == 0)

    # -- save -----------------------------------------------------------------------------------------
    def save(self, engine: Any, step: int, client_state: dict[str, Any]) -> Optional[str]:
        """Write ``client_state`` (plus world size, micro batch and RNG) with the engine as the tag of ``step``;
        returns the tag, or None when this step is already saved. Every rank must call it."""
        if step == self.saved_step:
            return None
        state = {**client_state, "world_size": self.world, "micro_batch": self.micro, "rng": rng_state()}
        tag = tag_for(step)
        save(engine, self.ckpt_dir, tag, state, keep_last=self.keep_last)
        self.saved_step = step
        return tag

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint on disk, if any."""
        tag = read_latest(self.ckpt_dir)
        return self.ckpt_dir / tag if tag else None

    # -- resume ---------------------------------------------------------------------------------------
    def prepare(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        """The DeepSpeed config to build the engine with: ``latest`` may name a universal checkpoint, which
        DeepSpeed must be told of before ``initialize`` (and only then may the world size differ)."""
        return prepare_resume(self.ckpt_dir, ds_config) if self.resume else ds_config

    def _mismatch(self, saved: int) -> ConfigError:
        return ConfigError(f"{self.ckpt_dir}: checkpoint was written by {saved} ranks, this run has {self.world}; "
                           f"convert it to a universal checkpoint (launch/convert_checkpoint.py --format universal) "
                           f"or use --no_resume")

    def restore(self, engine: Any) -> Optional[dict[str, Any]]:
        """Load ``latest`` into the engine and the RNGs; its client state (``micro_in_epoch`` in this run's
        layout, ``tag``), or None for a fresh start. Leftovers of a crashed save are removed either way.
        Every rank must call it."""
        remove_stale(self.ckpt_dir)
        dist_utils.barrier()
        if not self.resume:
            return None
        universal = engine.load_universal_checkpoint()
        tag = read_latest(self.ckpt_dir)
        if tag is not None and not universal:
            saved = saved_world_size(self.ckpt_dir, tag)
            if saved is not None and saved != self.world:
                raise self._mismatch(saved)
        state = load_latest(engine, self.ckpt_dir)
        if state is None:
            return None
        saved_world = state.get("world_size", self.world)
        # checkpoints of earlier versions name the micro batch only in their config
        saved_micro = state.get("micro_batch", state["config"]["schedule"]["batch_size"])
        if (saved_world, saved_micro) != (self.world, self.micro):
            if not universal:
                raise self._mismatch(saved_world)
            if "micro_in_epoch" in state:
                try:
                    state["micro_in_epoch"] = rescale_micro_in_epoch(state["micro_in_epoch"], saved_world,
                                                                     saved_micro, self.world, self.micro)
                except CheckpointError as exc:
                    raise ConfigError(f"{self.ckpt_dir}: {exc}") from None
        set_rng_state(state["rng"])
        self.saved_step = state["step"]
        return state
