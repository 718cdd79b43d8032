"""Finetuning and probing (linear or attentive) as a task of the one training loop (``train/trainer.py``).

The task supplies the classifier (encoder weights from ``finetune.init`` through the checkpoint package's
loader), layer-wise lr decay groups (timm's, from the classifier's ``group_matcher``: 0 = patch embedding,
i + 1 = block i, depth + 1 = fc_norm and head, so block i trains at ``base x layer_decay ** (depth - i)``),
mixup/cutmix with soft targets or label smoothing, repeated sampling (R clips per decoded video), an optional
fp32 EMA of the weights, one-view validation every ``eval.val_every_epochs`` and the multi-view test at the
end. Mixup draws come from a generator seeded by the position, like every other draw of the loop.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_finetune_model, build_split, classifier_of, resolve_lists
from motionmae_ds.checkpoint.engine_io import FROZEN_SOURCE_ATTR
from motionmae_ds.checkpoint.layout import BEST_RECORD, BEST_TAG, RUN_CHECKPOINTS
from motionmae_ds.checkpoint.weights import PROBE_ENCODER_KEY, pinned_source
from motionmae_ds.config import ConfigError, FinetuneConfig
from motionmae_ds.data.finishing import finish_clips
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.eval.evaluate import evaluate, record_paths, write_results
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.train.ema import ModelEma
from motionmae_ds.train.losses import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from motionmae_ds.train.mixup import VideoMixup
from motionmae_ds.train.optim import finetune_param_groups
from motionmae_ds.train.state import TrainState
from motionmae_ds.train.task import LossResult, RunContext, StepContext, Task
from motionmae_ds.train.throughput import FlopCounter
from motionmae_ds.train.trainer import Trainer


class FinetuneTask(Task):
    kind = "finetune"
    stat_names = ("loss", "train_top1")
    rate_key = "clips_per_s"
    default_dir = "finetune"
    curve_panels = (("loss", ("loss",)), ("top-1 (%)", ("train_top1", "val_top1")), ("learning rate", ("lr",)),
                    ("clips/s", ("clips_per_s",)))

    def __init__(self, cfg: FinetuneConfig) -> None:
        super().__init__(cfg)
        self.ema: Optional[ModelEma] = None
        self.init_report: Optional[str] = None
        self.encoder_source: Optional[str] = None  # a probe's frozen encoder, as its checkpoints name it
        # the best validation so far and where its checkpoint is (``checkpoints/best``): epoch, step, val_top1
        self.best: Optional[dict[str, Any]] = None

    def check(self, micro: int) -> None:
        cfg = self.cfg
        if cfg.mixup_active and cfg.finetune.probe == "none" and (micro * cfg.data.num_repeats) % 2:
            raise ConfigError(f"{cfg.source}: mixup needs an even number of clips per micro-batch; "
                              f"schedule.batch_size={micro} x data.num_repeats={cfg.data.num_repeats} is odd")

    @property
    def train_list(self) -> str:
        return self.lists.get("train", "")

    def build_train_set(self) -> Dataset:
        cfg = self.cfg
        self.lists = resolve_lists(cfg)
        if "train" not in self.lists:
            raise ConfigError(f"{cfg.source}: data.train_list is empty")
        self.train_set = build_split(cfg, self.lists["train"], "train")
        self.val_set = build_split(cfg, self.lists["val"], "val") if "val" in self.lists else None
        self.test_set = build_split(cfg, self.lists["test"], "test") if "test" in self.lists else None
        return self.train_set

    def build_model(self) -> nn.Module:
        model = build_finetune_model(self.cfg)
        self.init_report = self._init_weights(model)
        return model

    def _init_weights(self, model: nn.Module) -> Optional[str]:
        init = self.cfg.finetune.init
        if init.lower() == "none":
            return None
        purpose = "finetune_with_head" if self.cfg.finetune.init_keep_head else "finetune"
        try:
            report = ckpt.load_into(classifier_of(model), init, purpose)
        except ckpt.WeightsDoNotFitError as exc:  # its message starts with the source: init
            raise ConfigError(f"{self.cfg.source}: finetune.init={exc}") from None
        except ckpt.CheckpointError as exc:
            raise ConfigError(f"{self.cfg.source}: finetune.init: {exc}") from None
        if self.cfg.finetune.probe != "none":  # checkpoints then hold the probe alone (checkpoint/engine_io.py)
            self.encoder_source = pinned_source(init)
            setattr(model, FROZEN_SOURCE_ATTR, self.encoder_source)
        return report.summary()

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return finetune_param_groups(model, self.cfg)

    def flop_counter(self) -> FlopCounter:
        return FlopCounter.finetuning(self.cfg)

    def setup(self, run: RunContext) -> None:
        cfg = self.cfg
        self.engine = run.engine
        self.mixup: Optional[VideoMixup] = None
        if cfg.mixup_active:
            m = cfg.mixup
            self.mixup = VideoMixup(cfg.model.num_classes, m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob,
                                    m.label_smoothing)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.mixup.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.mixup.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        if cfg.finetune.model_ema:
            # fp32 shadow weights: a 0.9999 decay in bf16 would round every update away. Under ZeRO-3 the engine's
            # module holds placeholders: the average lives in a model of its own, filled from the gathered weights
            zero3 = run.engine.zero_optimization_stage() == 3
            self.ema = ModelEma(run.engine.module, cfg.finetune.model_ema_decay,
                                shadow=build_finetune_model(cfg) if zero3 else None, device=run.device)

    def loss(self, engine: Any, batch: dict[str, Any], ctx: StepContext) -> LossResult:
        packed, labels = batch["video"], torch.as_tensor(batch["label"])
        if packed.clips_per_item > 1:  # repeated sampling: B items of R clips -> B * R clips, item-major
            labels = labels.repeat_interleave(packed.clips_per_item)
        # the uint8 frames go to the device (pinned, non-blocking); crop, resize, flip, normalise and erase there
        d = self.cfg.data
        videos = finish_clips(packed, ctx.device, self.cfg.model.img_size, d.mean, d.std)
        labels = labels.to(ctx.device, non_blocking=True)
        targets: torch.Tensor = labels
        if self.mixup is not None:
            rng = np.random.default_rng(derive_seed(ctx.seed, ctx.epoch, ctx.micro, ctx.rank, 3))
            videos, targets = self.mixup(videos, labels, rng)
        logits = engine(videos)
        loss = self.criterion(logits.float(), targets)
        top1 = (logits.detach().argmax(-1) == labels).double().mean()
        return loss, [loss, top1], videos.shape[0]

    def record(self, means: list[float]) -> dict[str, float]:
        return {"loss": means[0], "train_top1": 100.0 * means[1]}

    def after_step(self, engine: Any, step: int) -> None:
        if self.ema is not None:
            self.ema.update(engine.module, step)

    def client_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        if self.encoder_source is not None:
            state[PROBE_ENCODER_KEY] = self.encoder_source
        if self.best is not None:
            state["best"] = dict(self.best)
        return state

    def load_client_state(self, state: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        trained_on = state.get(PROBE_ENCODER_KEY)
        if trained_on and self.encoder_source and trained_on != self.encoder_source:
            # finetune.init reads other weights now (its run went on): the probe continues on the encoder it
            # was trained on, which its checkpoint does not hold (ZeRO-0..2 keep frozen weights whole on every rank)
            if self.engine.zero_optimization_partition_weights():
                raise ConfigError(f"{self.cfg.source}: finetune.init={self.cfg.finetune.init} reads other weights "
                                  f"than the probe's checkpoint was trained on; set finetune.init={trained_on}")
            ckpt.load_into(classifier_of(self.engine.module), trained_on, "finetune")
            self.encoder_source = trained_on
            if self.ema is not None:  # its frozen part is the encoder as it was built: the one trained on now
                self.ema.copy_frozen(self.engine.module)
        self.best = state.get("best")

    def run_info(self) -> dict[str, Any]:
        return {"lists": self.lists, "init": self.cfg.finetune.init, "init_report": self.init_report}

    def startup_lines(self) -> list[str]:
        return [self.init_report] if self.init_report else []

    def describe(self, run: RunContext) -> str:
        cfg = self.cfg
        mode = {"none": "finetune", "linear": "linear probe", "attentive": "attentive probe"}[cfg.finetune.probe]
        return (f"{mode}: {len(self.train_set)} training videos x {cfg.data.num_repeats} clips, {run.world} "
                f"rank(s), batch {run.micro} x {run.accum} x {run.world} = {run.total_batch}, peak lr "
                f"{run.peak_lr:.3g}, {run.steps_per_epoch} steps/epoch, output {run.out_dir}")

    # -- evaluation hooks ---------------------------------------------------------------------------------
    def _evaluate(self, run: RunContext, dataset: Any, model: nn.Module) -> tuple[dict[str, Any], Any]:
        cfg = self.cfg
        return evaluate(model, dataset, cfg.eval.batch_size, run.device, run.rank, run.world,
                        num_workers=cfg.data.num_workers, timeout_s=cfg.data.loader_timeout_s,
                        mean=cfg.data.mean, std=cfg.data.std)

    def end_epoch(self, run: RunContext, state: TrainState, last: bool, summary: dict[str, Any]) -> None:
        every = self.cfg.eval.val_every_epochs
        if self.val_set is None or not every or not ((state.epoch + 1) % every == 0 or last):
            return
        metrics, _ = self._evaluate(run, self.val_set, run.engine.module)
        run.log.log({"epoch": state.epoch, "step": state.step, "val_top1": metrics["top1"],
                     "val_top5": metrics["top5"]})
        run.log.info(f"epoch {state.epoch}: val top-1 {metrics['top1']:.2f} ({metrics['num_videos']} videos)")
        summary.setdefault("val", []).append(metrics["top1"])
        # every rank holds the same gathered metrics, so every rank takes the same branch into the collective save
        if self.best is None or metrics["top1"] > self.best["val_top1"]:
            self._save_best(run, state, metrics)

    def _save_best(self, run: RunContext, state: TrainState, metrics: dict[str, Any]) -> None:
        """``checkpoints/best``: a whole checkpoint (as the step tags, written and replaced atomically) that no
        ``latest`` names and keep-last never prunes, with ``best.json`` naming its epoch, step and val top-1."""
        self.best = {"epoch": state.epoch, "step": state.step, "val_top1": metrics["top1"],
                     "val_top5": metrics["top5"]}
        client = {"kind": self.kind, "config": self.cfg.to_dict(), **state.state_dict(), **self.client_state(),
                  "world_size": run.world, "micro_batch": run.micro, "rng": ckpt.rng_state()}
        ckpt_dir = run.out_dir / RUN_CHECKPOINTS
        ckpt.save(run.engine, ckpt_dir, BEST_TAG, client, latest=False)
        if dist_utils.is_main():
            record = ckpt_dir / BEST_TAG / BEST_RECORD
            tmp = record.with_name(f".{BEST_RECORD}.tmp")
            tmp.write_text(json.dumps(self.best, indent=1) + "\n")
            os.replace(tmp, record)
        run.log.log({"epoch": state.epoch, "step": state.step, "best_val_top1": metrics["top1"]})
        run.log.info(f"best checkpoint {ckpt_dir / BEST_TAG} (epoch {state.epoch}, step {state.step}, val top-1 "
                     f"{metrics['top1']:.2f})")

    def finish(self, run: RunContext, summary: dict[str, Any]) -> None:
        if self.best is not None:
            summary["best"] = dict(self.best)
        if self.test_set is not None:
            summary["test"] = self._test(run, run.engine.module, prefix="")
            if self.ema is not None:
                summary["test_ema"] = self._test(run, self.ema.module, prefix="ema_")
        self.write_curves(run)

    def _test(self, run: RunContext, model: nn.Module, prefix: str) -> dict[str, Any]:
        metrics, scores = self._evaluate(run, self.test_set, model)
        if dist_utils.is_main():
            write_results(run.out_dir, metrics, scores, record_paths(self.test_set), self.cfg.eval.save_scores,
                          prefix)
        run.log.info(f"test{' (EMA)' if prefix else ''}: top-1 {metrics['top1']:.2f}, top-5 "
                     f"{metrics['top5']:.2f} over {metrics['num_videos']} videos x {metrics['views_per_video']} "
                     f"views -> {run.out_dir / (prefix + 'metrics.json')}")
        return metrics


def run_finetuning(cfg: FinetuneConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                   resume: bool = True) -> dict[str, Any]:
    return Trainer(FinetuneTask(cfg), ds_config_path, output_dir, resume).run()
