"""Pretraining as a task of the one training loop (``train/trainer.py``): MotionMAE on masked clips.

The loop owns the engine, schedule, checkpoints, resume and logging; this task supplies the model (optionally
its encoder initialised from another run or a VideoMAE/HF checkpoint), the clip dataset, the masks (drawn on
the device from the position's generator) and the per-head losses. Reconstruction figures at every checkpoint
come from a callable the launcher hands in (``tools/visualize.py``), so the training code never imports tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn
from torch.utils.data import Dataset

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import (
    build_decoder_masker,
    build_masker,
    build_model,
    build_pretrain_set,
    model_kwargs,
    resolve_list_file,
)
from motionmae_ds.config import PretrainConfig
from motionmae_ds.config.pretrain import pretrain_sources
from motionmae_ds.data.finishing import finish_clips
from motionmae_ds.data.lists import read_list
from motionmae_ds.data.mixture import MixtureDataset
from motionmae_ds.models import build_pretrain_model
from motionmae_ds.models.masking import mask_counts
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.train.optim import param_groups
from motionmae_ds.train.task import LossResult, RunContext, StepContext, Task
from motionmae_ds.train.throughput import FlopCounter
from motionmae_ds.train.trainer import Trainer

# figure(model, cfg, video path, png path): draws one reconstruction figure
FigureFn = Callable[[nn.Module, PretrainConfig, str, Path], None]


class PretrainTask(Task):
    kind = "pretrain"
    stat_names = ("loss", "loss_frame", "loss_motion")
    rate_key = "samples_per_s"
    default_dir = "pretrain"
    curve_panels = (("loss", ("loss",)), ("loss per head", ("loss_frame", "loss_motion")), ("learning rate", ("lr",)),
                    ("clips/s", ("samples_per_s",)))

    def __init__(self, cfg: PretrainConfig, figure: Optional[FigureFn] = None) -> None:
        super().__init__(cfg)
        self.figure = figure
        self.list_file = ""

    @property
    def train_list(self) -> str:
        return self.list_file

    def build_train_set(self) -> Dataset:
        self.list_file = resolve_list_file(self.cfg)
        self.dataset = build_pretrain_set(self.cfg, self.list_file)
        return self.dataset

    def build_model(self) -> nn.Module:
        model = build_model(self.cfg)
        self.masker = build_masker(self.cfg, tuple(model.grid))
        self.decoder_masker = build_decoder_masker(self.cfg, tuple(model.grid))
        self.counts = mask_counts(self.masker, self.decoder_masker)  # the step then reads no counts back
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return param_groups(model, self.cfg.optim.weight_decay)

    def flop_counter(self) -> FlopCounter:
        return FlopCounter(self.cfg)

    def loss(self, engine: Any, batch: dict[str, Any], ctx: StepContext) -> LossResult:
        # The uint8 frames go to the device (pinned, non-blocking) and are finished there: crop, resize, flip,
        # normalise; B items of R clips (repeated temporal sampling) give B * R clips, each with its own mask.
        d = self.cfg.data
        videos = finish_clips(batch["video"], ctx.device, self.cfg.model.img_size, d.mean, d.std)
        mask = self.masker(videos.shape[0], device=ctx.device, generator=ctx.generator)
        if self.decoder_masker is None:
            out = engine(videos, mask, counts=self.counts)
        else:  # drawn after the encoder mask from the same generator: a resumed step draws the same
            keep = self.decoder_masker(videos.shape[0], device=ctx.device, generator=ctx.generator)
            out = engine(videos, mask, decoder_keep=keep, counts=self.counts)
        return out["loss"], [out["loss"], out["loss_frame"], out["loss_motion"]], videos.shape[0]

    def run_info(self) -> dict[str, Any]:
        return {"list_file": self.list_file, "sources": self.startup_lines()}

    def startup_lines(self) -> list[str]:
        return self.dataset.describe() if isinstance(self.dataset, MixtureDataset) else []

    def describe(self, run: RunContext) -> str:
        repeats = f" x {self.cfg.data.num_repeats} clips" if self.cfg.data.num_repeats > 1 else ""
        return (f"{len(self.dataset)} videos, {run.world} rank(s), batch {run.micro}{repeats} x "
                f"{run.accum} x {run.world} = {run.total_batch}, peak lr {run.peak_lr:.3g}, "
                f"{run.steps_per_epoch} steps/epoch, output {run.out_dir}")

    def on_checkpoint(self, run: RunContext, tag: str) -> None:
        self.write_curves(run)
        if self.figure is None or not self.cfg.run.visualize:
            return
        # under ZeRO-3 every rank takes part in gathering the weights, and rank 0 draws with a full copy
        module = ckpt.gathered_module(run.engine, lambda: build_pretrain_model(**model_kwargs(self.cfg)))
        if not dist_utils.is_main():
            return
        try:
            video = self.cfg.data.vis_video or self._first_video()
            self.figure(module, self.cfg, video, run.out_dir / "vis" / f"{tag}.png")
        except Exception as exc:  # a figure must never kill a training run
            run.log.info(f"warning: reconstruction figure for {tag} failed: {type(exc).__name__}: {exc}")

    def _first_video(self) -> str:
        d = self.cfg.data
        records = read_list(self.list_file, fmt=d.list_format, root=pretrain_sources(self.cfg)[0].root,
                            frame_template=d.frame_template, frame_start=d.frame_start)
        return str(records[0].path)


def run_pretraining(cfg: PretrainConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                    resume: bool = True, figure: Optional[FigureFn] = None) -> dict[str, Any]:
    return Trainer(PretrainTask(cfg, figure), ds_config_path, output_dir, resume).run()
