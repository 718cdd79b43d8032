"""What a task hands the training loop (``engine/trainer.py``): the hooks where pretraining and finetuning differ,
and the position and step context the loop passes back to them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from motionmae_ds.train.throughput import FlopCounter

if TYPE_CHECKING:  # the trainer imports this module; the hooks only name its type
    from motionmae_ds.train.trainer import Trainer


@dataclass
class Position:
    """Where the run is: epochs and optimizer steps completed, micro-batches done in the current epoch."""
    epoch: int = 0
    step: int = 0
    micro_in_epoch: int = 0
    epoch_bad: int = 0
    epoch_seen: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.micro_in_epoch, self.epoch_bad, self.epoch_seen = self.epoch + 1, 0, 0, 0


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

    def setup(self, trainer: "Trainer") -> None:
        """Called once the engine exists (masks, mixup, criterion, EMA)."""

    def loss(self, engine: Any, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """(loss to backpropagate, the statistics of ``stat_names`` as detached scalars, clips in the batch)."""
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

    def describe(self, trainer: "Trainer") -> str:
        return ""

    def on_checkpoint(self, trainer: "Trainer", tag: str) -> None:
        """After a checkpoint is written, on every rank (figures)."""

    def end_epoch(self, trainer: "Trainer", pos: Position, last: bool, summary: dict[str, Any]) -> None:
        """After an epoch's last step, before its checkpoint (validation)."""

    def finish(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        """After the last epoch (the multi-view test)."""
