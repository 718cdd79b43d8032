"""What a task hands the training loop (``train/trainer.py``), and what the loop hands back to it: the hooks where
pretraining and finetuning differ, the run context they receive and the step context of one micro-step.

The hooks see a ``RunContext`` (the engine, where the run writes, its batch layout), never the trainer, so a task
depends on nothing of the loop but these types and the ``TrainState`` it is told its position with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from motionmae_ds.train.curves import PanelSpec, save_curves
from motionmae_ds.train.logging import RunLogger
from motionmae_ds.train.state import TrainState
from motionmae_ds.train.throughput import FlopCounter

# what a task's loss returns: (loss to backpropagate, the statistics of ``stat_names`` as detached scalars,
# clips in the batch)
LossResult = tuple[torch.Tensor, list[torch.Tensor], int]


@dataclass
class RunContext:
    """The run as a task's hooks see it, once the engine exists."""
    engine: Any
    device: torch.device
    rank: int
    world: int
    out_dir: Path
    log: RunLogger
    micro: int            # clips (videos, before repeats) per rank and micro-batch
    accum: int            # micro-batches per optimizer step
    total_batch: int      # micro x accum x world
    peak_lr: float
    steps_per_epoch: int


@dataclass
class StepContext:
    """What a task's loss needs to know about the micro-step it computes."""
    seed: int
    epoch: int
    micro: int
    rank: int
    device: torch.device
    generator: torch.Generator  # the mask generator, a function of the position


class Task:
    """The part of a run that differs between pretraining and finetuning. Subclasses fill in the methods."""
    kind = "task"
    # names of the statistics ``loss`` returns (loss first), averaged over ranks and steps for the log
    stat_names: tuple[str, ...] = ("loss",)
    rate_key = "samples_per_s"
    default_dir = "run"
    # the panels of curves.png: (title, log keys drawn in it)
    curve_panels: tuple[PanelSpec, ...] = ()

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def check(self, micro: int) -> None:
        """Config checks that need the batch layout (before the process group's expensive parts)."""

    def build_train_set(self) -> Dataset:
        raise NotImplementedError

    @property
    def train_list(self) -> str:
        return ""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        raise NotImplementedError

    def flop_counter(self) -> FlopCounter:
        raise NotImplementedError

    def setup(self, run: RunContext) -> None:
        """Called once the engine exists (masks, mixup, criterion, EMA)."""

    def loss(self, engine: Any, batch: dict[str, Any], ctx: StepContext) -> LossResult:
        """The micro-step's loss, its statistics and its clip count (``LossResult``)."""
        raise NotImplementedError

    def record(self, means: list[float]) -> dict[str, float]:
        """The log fields of the averaged statistics."""
        return dict(zip(self.stat_names, means))

    def after_step(self, engine: Any, step: int) -> None:
        """After each optimizer step (EMA)."""

    def client_state(self) -> dict[str, Any]:
        return {}

    def load_client_state(self, state: dict[str, Any]) -> None:
        pass

    def run_info(self) -> dict[str, Any]:
        return {}

    def startup_lines(self) -> list[str]:
        return []

    def describe(self, run: RunContext) -> str:
        return ""

    def on_checkpoint(self, run: RunContext, tag: str) -> None:
        """After a checkpoint is written, on every rank (figures: curves.png, a task's own)."""
        self.write_curves(run)

    def end_epoch(self, run: RunContext, state: TrainState, last: bool, summary: dict[str, Any]) -> None:
        """After an epoch's last step, before its checkpoint (validation)."""

    def finish(self, run: RunContext, summary: dict[str, Any]) -> None:
        """After the last epoch (the multi-view test); then curves.png once more, with everything logged."""
        self.write_curves(run)

    def write_curves(self, run: RunContext) -> None:
        """``curves.png`` in the run directory from log.jsonl (rank 0; a failure is a warning, never the run's)."""
        if run.rank != 0 or not self.curve_panels:
            return
        try:
            save_curves(run.out_dir, self.curve_panels)
        except Exception as exc:  # a picture must never kill a training run
            run.log.info(f"warning: {run.out_dir / 'curves.png'} failed: {type(exc).__name__}: {exc}")
