"""Finetuning and linear probing under DeepSpeed: the classifier, layer-wise lr decay, mixup/cutmix, repeated
sampling, optional EMA, one-view validation every epoch and the multi-view test pass at the end.

Same conventions as pretraining (``engine/pretrain.py``): ZeRO-2 + bf16 from the DeepSpeed JSON, a client
AdamW over param groups whose ``lr_scale``/``wd_scale`` the per-step schedule applies, checkpoints through
``engine/checkpoint.py``, and every random draw (data, drop path, mixup) a function of the run's position.
Layer ids come from the classifier's ``group_matcher`` through timm (0 = patch embedding, i + 1 = block i,
depth + 1 = fc_norm and head), so block i trains at ``base x layer_decay ** (depth - i)`` and the embedding one step lower.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from motionmae_ds.config import ConfigError, batch_layout
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.engine import checkpoint as ckpt
from motionmae_ds.engine import distributed as dist_utils
from motionmae_ds.engine.builders import cache_dir, read_records
from motionmae_ds.engine.cpu_process import tune_cpu_process
from motionmae_ds.engine.ds_config import fill_batch, load_ds_config
from motionmae_ds.engine.evaluate import evaluate, write_results
from motionmae_ds.engine.logging import RunLogger
from motionmae_ds.engine.mixup import VideoMixup
from motionmae_ds.engine.optim import build_adamw, param_groups, set_lr_wd, timm_layer_decay_groups
from motionmae_ds.engine.pretrain import NonFiniteLossError, TooManyBadVideosError, _seed_step
from motionmae_ds.engine.sampler import DistributedSampler
from motionmae_ds.engine.throughput import FlopCounter
from motionmae_ds.engine.schedule import Schedule, scaled_lr
from motionmae_ds.finetune_config import FinetuneConfig, check_finetune_paths

__all__ = ["FinetuneTrainer", "LinearProbe", "build_finetune_model", "run_finetuning", "NonFiniteLossError",
           "TooManyBadVideosError"]


# -- model ------------------------------------------------------------------------------------------------

class LinearProbe(nn.Module):
    """A frozen encoder (always in eval mode) whose mean-pooled tokens go through a normalisation without
    affine parameters (BatchNorm1d as MAE's probe, or LayerNorm) into the classifier's linear head."""

    def __init__(self, backbone: nn.Module, norm: str = "batchnorm") -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.embed_dim
        self.probe_norm = (nn.BatchNorm1d(dim, affine=False, eps=1e-6) if norm == "batchnorm"
                           else nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False))
        for name, p in backbone.named_parameters():
            p.requires_grad = name.startswith("head.")

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # features as at test time: no drop path, no dropout
        return self

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        from motionmae_ds.models.vit import VisionTransformerEncoder

        with torch.no_grad():
            # the encoder's tokens, skipping the classifier's own fc_norm (a fresh, untrained layer)
            feats = VisionTransformerEncoder.forward(self.backbone, videos).mean(dim=1)
        return self.backbone.head(self.probe_norm(feats))


def build_finetune_model(cfg: FinetuneConfig) -> nn.Module:
    """The classifier of ``cfg.model`` (wrapped in a ``LinearProbe`` in probe mode), without weights loaded."""
    from motionmae_ds.models import build_classifier

    from motionmae_ds.engine.builders import classifier_kwargs

    try:
        clf = build_classifier(**classifier_kwargs(cfg))
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: model: {exc}") from None
    return LinearProbe(clf, cfg.finetune.probe_norm) if cfg.finetune.linear_probe else clf


def classifier_of(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, LinearProbe) else model


def build_param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Layer-decay groups over the trainable parameters (only the head in probe mode)."""
    if isinstance(model, LinearProbe):
        return param_groups(model, cfg.optim.weight_decay)
    # timm reads the layer ids from the classifier's group_matcher (embedding 0, block i -> i + 1, rest last)
    return timm_layer_decay_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)


# -- data -------------------------------------------------------------------------------------------------

def resolve_lists(cfg: FinetuneConfig) -> dict[str, str]:
    """split -> list file: the configured ones, or the embedded motion-classes set (generated once, cached)."""
    if not cfg.data.synthetic:
        return {k: v for k, v in (("train", cfg.data.train_list), ("val", cfg.data.val_list),
                                  ("test", cfg.data.test_list)) if v}
    from motionmae_ds.data.synthetic import ensure_synthetic_dataset

    d = cfg.data
    sizes = dict(num_videos=d.synthetic_videos, num_frames=d.synthetic_frames, size=d.synthetic_size)
    custom = [f"{k}{v}" for k, v in sizes.items() if v is not None]
    root = cache_dir(cfg) / ("synthetic_" + "_".join(custom) if custom else "synthetic")  # type: ignore[arg-type]
    lists: Any = None
    if dist_utils.is_main():
        lists = ensure_synthetic_dataset(root, kind="motion_classes", seed=0, **sizes)
    dist_utils.barrier()
    if not dist_utils.is_main():
        lists = ensure_synthetic_dataset(root, kind="motion_classes", seed=0, **sizes)
    return dict(lists)


def build_split(cfg: FinetuneConfig, list_file: str, mode: str) -> Any:
    from motionmae_ds.data.datasets import VideoClipDataset

    records = read_records(cfg.data, list_file, list_file)
    bad = [r for r in records if not 0 <= int(r.label) < cfg.model.num_classes]
    if bad:
        raise ConfigError(f"{list_file}: label {bad[0].label} of {bad[0].path} outside 0..{cfg.model.num_classes - 1}"
                          f" (model.num_classes={cfg.model.num_classes})")
    d = cfg.data
    common = dict(num_frames=cfg.model.num_frames, sampling_rate=d.sampling_rate, input_size=cfg.model.img_size,
                  short_side_size=cfg.short_side, mean=d.mean, std=d.std, seed=cfg.run.seed, backend=d.decode_backend)
    if mode == "train":
        extra = dict(scale=d.scale, flip=d.flip, rand_aug=d.rand_aug or None, random_erase=d.random_erase,
                     num_repeats=d.num_repeats)
    elif mode == "test":
        extra = dict(test_clips=cfg.eval.test_clips, test_crops=cfg.eval.test_crops)
    else:
        extra = {}
    try:
        return VideoClipDataset(records, mode=mode, **common, **extra)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data ({mode}): {exc}") from None


def record_paths(dataset: Any) -> Optional[list[str]]:
    records = getattr(dataset, "records", None)
    return [str(r.path) for r in records] if records is not None else None


# -- the run ----------------------------------------------------------------------------------------------

class FinetuneTrainer:
    """One finetuning (or linear-probe) run. ``run()`` returns a summary dict with the test metrics."""

    def __init__(self, cfg: FinetuneConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                 resume: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        check_finetune_paths(cfg)  # before any process group exists: a typo must not cost a JIT build
        dist_utils.init_distributed()
        tune_cpu_process()
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        stem = Path(cfg.source).stem if cfg.source.endswith((".yaml", ".yml")) else "finetune"
        self.out_dir = Path(output_dir or cfg.run.output_dir or Path("runs") / stem)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.micro, self.accum, self.total_batch = batch_layout(cfg, self.world)  # type: ignore[arg-type]
        if cfg.mixup_active and not cfg.finetune.linear_probe and (self.micro * cfg.data.num_repeats) % 2:
            raise ConfigError(f"{cfg.source}: mixup needs an even number of clips per micro-batch; "
                              f"schedule.batch_size={self.micro} x data.num_repeats={cfg.data.num_repeats} is odd")
        self.ds_config = fill_batch(load_ds_config(ds_config_path), self.micro, self.accum, self.world,
                                    origin=str(ds_config_path), yaml_origin=cfg.source)

    def _build(self) -> None:
        import deepspeed
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        cfg = self.cfg
        self.lists = resolve_lists(cfg)
        if "train" not in self.lists:
            raise ConfigError(f"{cfg.source}: data.train_list is empty")
        self.train_set = build_split(cfg, self.lists["train"], "train")
        self.val_set = build_split(cfg, self.lists["val"], "val") if "val" in self.lists else None
        self.test_set = build_split(cfg, self.lists["test"], "test") if "test" in self.lists else None
        self.sampler = DistributedSampler(len(self.train_set), self.world, self.rank, seed=cfg.run.seed)
        self.micro_per_epoch = (self.sampler.per_rank // self.micro) // self.accum * self.accum
        if self.micro_per_epoch == 0:
            raise ConfigError(f"{cfg.source}: {len(self.train_set)} training videos give no full optimizer step with "
                              f"schedule.batch_size={self.micro} x accum {self.accum} x world size {self.world}")
        self.steps_per_epoch = self.micro_per_epoch // self.accum

        torch.manual_seed(cfg.run.seed)
        model = build_finetune_model(cfg)
        self.init_report = self._init_weights(model)
        groups = build_param_groups(model, cfg)
        self.peak_lr = scaled_lr(cfg.optim.base_lr, self.total_batch)
        self.flops = FlopCounter.finetuning(cfg)
        self.schedule = Schedule(self.peak_lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end,
                                 self.steps_per_epoch, cfg.schedule.epochs, cfg.schedule.warmup_epochs)
        optimizer = build_adamw(groups, self.peak_lr, cfg.optim.betas, cfg.optim.eps)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.mixup = None
        if cfg.mixup_active:
            m = cfg.mixup
            self.mixup = VideoMixup(cfg.model.num_classes, m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob,
                                    m.label_smoothing)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.mixup.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.mixup.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = None
        if cfg.finetune.model_ema:
            from timm.utils import ModelEmaV3

            # fp32 shadow weights: a 0.9999 decay in bf16 would round every update away
            self.ema = ModelEmaV3(self.engine.module, decay=cfg.finetune.model_ema_decay, dtype=torch.float32)

    def _init_weights(self, model: nn.Module) -> Optional[str]:
        from motionmae_ds.models.pretrained import PretrainedLoadError, load_pretrained

        init = self.cfg.finetune.init
        if init.lower() == "none":
            return None
        try:
            report = load_pretrained(classifier_of(model), init, keep_head=self.cfg.finetune.init_keep_head)
        except PretrainedLoadError as exc:
            raise ConfigError(f"{self.cfg.source}: finetune.init: {exc}") from None
        if not report.loaded:
            raise ConfigError(f"{self.cfg.source}: finetune.init={init}: no weight matched the model\n"
                              + report.summary())
        return report.summary()

    def _loader(self, epoch: int) -> DataLoader:
        from motionmae_ds.data.datasets import collate_clips

        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        workers = self.cfg.data.num_workers
        return DataLoader(self.train_set, batch_size=self.micro, sampler=self.sampler, num_workers=workers,
                          collate_fn=collate_clips, drop_last=True, persistent_workers=False,
                          timeout=self.cfg.data.loader_timeout_s if workers > 0 else 0)

    def _evaluate(self, dataset: Any, model: Optional[nn.Module] = None) -> tuple[dict[str, Any], Any]:
        cfg = self.cfg
        return evaluate(model or self.engine.module, dataset, cfg.eval.batch_size, self.device, self.rank, self.world,
                        num_workers=cfg.data.num_workers, timeout_s=cfg.data.loader_timeout_s)

    def _save(self, epoch: int, step: int) -> None:
        state = {"epoch": epoch, "step": step, "world_size": self.world, "config": self.cfg.to_dict(),
                 "rng": ckpt.rng_state(), "kind": "finetune"}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        if ckpt.save(self.engine, self.ckpt_dir, ckpt.tag_for(step), state, keep_last=self.cfg.run.keep_last):
            self.log.info(f"checkpoint {self.ckpt_dir / ckpt.tag_for(step)} (epoch {epoch}, step {step})")

    def _restore(self) -> tuple[int, int]:
        """(next epoch, optimizer steps done); checkpoints are written at epoch ends."""
        ckpt.remove_stale(self.ckpt_dir)
        dist_utils.barrier()
        if not self.resume:
            return 0, 0
        state = ckpt.load_latest(self.engine, self.ckpt_dir)
        if state is None:
            return 0, 0
        if state.get("world_size", self.world) != self.world:
            raise ConfigError(f"{self.ckpt_dir}: checkpoint was written by {state['world_size']} ranks, this run has "
                              f"{self.world}; use --no_resume or another output dir")
        ckpt.set_rng_state(state["rng"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        self.resumed_from = state["tag"]
        return state["epoch"] + 1, state["step"]

    def run(self) -> dict[str, Any]:
        self._build()
        self.resumed_from = None
        epoch, step = self._restore()
        cfg = self.cfg
        self.log = RunLogger(self.out_dir, enabled=dist_utils.is_main(), resume_step=step)
        self.log.write_config(cfg.to_dict(), extra={
            "world_size": self.world, "micro_batch": self.micro, "accum_steps": self.accum,
            "total_batch": self.total_batch, "peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
            "lists": self.lists, "ds_config": self.ds_config, "init": cfg.finetune.init,
            "init_report": self.init_report})
        if self.init_report:
            self.log.info(self.init_report)
        if self.resumed_from:
            self.log.info(f"resumed from {self.ckpt_dir / self.resumed_from}: epoch {epoch}, step {step}")
        mode = "linear probe" if cfg.finetune.linear_probe else "finetune"
        self.log.info(f"{mode}: {len(self.train_set)} training videos x {cfg.data.num_repeats} clips, {self.world} "
                      f"rank(s), batch {self.micro} x {self.accum} x {self.world} = {self.total_batch}, peak lr "
                      f"{self.peak_lr:.3g}, {self.steps_per_epoch} steps/epoch, output {self.out_dir}")
        summary: dict[str, Any] = {"first_loss": None, "last_loss": None, "val": [], "resumed_from": self.resumed_from}
        try:
            while epoch < cfg.schedule.epochs:
                step = self._train_epoch(epoch, step, summary)
                last = epoch + 1 == cfg.schedule.epochs
                if self.val_set is not None and cfg.eval.val_every_epochs and (
                        (epoch + 1) % cfg.eval.val_every_epochs == 0 or last):
                    metrics, _ = self._evaluate(self.val_set)
                    self.log.log({"epoch": epoch, "step": step, "val_top1": metrics["top1"],
                                  "val_top5": metrics["top5"]})
                    self.log.info(f"epoch {epoch}: val top-1 {metrics['top1']:.2f} ({metrics['num_videos']} videos)")
                    summary["val"].append(metrics["top1"])
                if last or (cfg.run.save_every_epochs and (epoch + 1) % cfg.run.save_every_epochs == 0):
                    self._save(epoch, step)
                epoch += 1
            summary["steps"] = step
            if self.test_set is not None:
                summary["test"] = self._test(self.engine.module, prefix="")
                if self.ema is not None:
                    summary["test_ema"] = self._test(self.ema.module, prefix="ema_")
        finally:
            self.log.close()
        return summary

    def _test(self, model: nn.Module, prefix: str) -> dict[str, Any]:
        cfg = self.cfg
        metrics, scores = self._evaluate(self.test_set, model)
        if dist_utils.is_main():
            write_results(self.out_dir, metrics, scores, record_paths(self.test_set), cfg.eval.save_scores, prefix)
        self.log.info(f"test{' (EMA)' if prefix else ''}: top-1 {metrics['top1']:.2f}, top-5 {metrics['top5']:.2f} "
                      f"over {metrics['num_videos']} videos x {metrics['views_per_video']} views -> "
                      f"{self.out_dir / (prefix + 'metrics.json')}")
        return metrics

    def _train_epoch(self, epoch: int, step: int, summary: dict[str, Any]) -> int:
        from tqdm import tqdm

        cfg, engine = self.cfg, self.engine
        engine.train()
        bar = tqdm(total=self.micro_per_epoch, desc=f"epoch {epoch}", disable=not dist_utils.is_main(),
                   dynamic_ncols=True, leave=False)
        meter = torch.zeros(2, dtype=torch.float64)  # loss sum, correct-top-1 fraction sum
        meter_n, bad, seen = 0, 0, 0
        t_last, samples_since = time.perf_counter(), 0
        batches = iter(self._loader(epoch))
        for micro in range(self.micro_per_epoch):
            batch = next(batches)
            seen += len(batch["label"])
            for path, reason in batch.get("skipped") or []:
                bad += 1
                self.log.info(f"skipped bad video {path}: {reason}")
            lr, wd = self.schedule.lr(step), self.schedule.wd(step)
            set_lr_wd(engine.optimizer, lr, wd)
            _seed_step(cfg.run.seed, epoch, micro, self.rank, self.device)
            videos, labels = batch["video"], torch.as_tensor(batch["label"])
            if videos.dim() == 6:  # repeated sampling: (B, R, ...) -> (B * R, ...)
                labels = labels.repeat_interleave(videos.shape[1])
                videos = videos.flatten(0, 1)
            videos, labels = videos.to(self.device, non_blocking=True), labels.to(self.device)
            targets: torch.Tensor = labels
            if self.mixup is not None:
                rng = np.random.default_rng(derive_seed(cfg.run.seed, epoch, micro, self.rank, 3))
                videos, targets = self.mixup(videos, labels, rng)
            logits = engine(videos)
            loss = self.criterion(logits.float(), targets)
            stats = torch.stack([loss.detach().double().cpu(),
                                 (logits.detach().argmax(-1) == labels).double().mean().cpu()])
            stats = dist_utils.all_reduce_sum(stats) / self.world
            if not torch.isfinite(stats).all():
                raise NonFiniteLossError(f"non-finite loss {stats[0].item()} at epoch {epoch} step {step + 1} "
                                         f"(micro-step {micro}); stopped before the update")
            engine.backward(loss)
            engine.step()
            meter += stats
            meter_n += 1
            samples_since += videos.shape[0] * self.world
            bar.update(1)
            if (micro + 1) % self.accum:
                continue
            step += 1
            if self.ema is not None:
                self.ema.update(engine.module, step)
            last = micro + 1 == self.micro_per_epoch
            if step % cfg.run.log_every == 0 or last or step == 1:
                elapsed = time.perf_counter() - t_last
                grad_norm = engine.get_global_grad_norm()
                mean = (meter / meter_n).tolist()
                cps = samples_since / elapsed if elapsed > 0 else 0.0
                record = {"epoch": epoch, "step": step, "loss": mean[0], "train_top1": 100.0 * mean[1], "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                          "clips_per_s": cps, "tflops": self.flops.tflops_per_device(cps / self.world)}
                utilisation = self.flops.mfu(cps / self.world)
                if utilisation is not None:  # GPUs with a known bf16 peak only
                    record["mfu"] = utilisation
                self.log.log(record)
                summary["first_loss"] = mean[0] if summary["first_loss"] is None else summary["first_loss"]
                summary["last_loss"] = mean[0]
                bar.set_postfix(loss=f"{mean[0]:.4f}", lr=f"{lr:.2e}")
                meter.zero_()
                meter_n, samples_since, t_last = 0, 0, time.perf_counter()
        bar.close()
        counts = dist_utils.all_reduce_sum(torch.tensor([bad, seen], dtype=torch.float64))
        if counts[1] and counts[0] / counts[1] > cfg.data.max_bad_fraction:
            raise TooManyBadVideosError(f"epoch {epoch}: {int(counts[0])}/{int(counts[1])} samples were unreadable "
                                        f"videos, above data.max_bad_fraction={cfg.data.max_bad_fraction}")
        return step


def run_finetuning(cfg: FinetuneConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                   resume: bool = True) -> dict[str, Any]:
    return FinetuneTrainer(cfg, ds_config_path, output_dir, resume).run()


# -- evaluation of a finished run or a weights file ------------------------------------------------------

def load_eval_weights(model: nn.Module, source: str | Path) -> str:
    """Weights of a finetune run (exact module names, strict) or any classifier checkpoint (via the
    pretrained loader, head kept). Returns a one-line description for the log."""
    from motionmae_ds.models.pretrained import PretrainedLoadError, load_pretrained, read_checkpoint

    try:
        state, info = read_checkpoint(source)
    except PretrainedLoadError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None
    own = model.state_dict()
    if set(own) <= set(state):
        if "pos_embed" in state:
            # a run initialised from a learned table stored it; make this model's table a state entry too
            classifier_of(model)._non_persistent_buffers_set.discard("pos_embed")
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ConfigError(f"--checkpoint {source}: missing {', '.join(result.missing_keys)}")
        return f"loaded {len(own)} tensors from {source} ({info.get('weights', info['kind'])})"
    if isinstance(model, LinearProbe):
        raise ConfigError(f"--checkpoint {source}: not a linear-probe checkpoint (no probe_norm/backbone names)")
    report = load_pretrained(model, source, keep_head=True)
    if report.missing or report.mismatched or any(n.startswith("head.") for n in report.dropped):
        raise ConfigError(f"--checkpoint {source}: does not hold a complete classifier\n{report.summary()}")
    return report.summary()


def evaluate_checkpoint(cfg: FinetuneConfig, source: str | Path, output_dir: str | Path,
                        split: str = "test") -> dict[str, Any]:
    """Multi-view test (or one-view val) of saved weights on all ranks; rank 0 writes metrics/predictions."""
    def split_dataset() -> Any:
        lists = resolve_lists(cfg)
        if split not in lists:
            raise ConfigError(f"{cfg.source}: data.{split}_list is empty")
        if not Path(lists[split]).is_file():
            raise ConfigError(f"{cfg.source}: data.{split}_list={lists[split]}: file not found")
        return build_split(cfg, lists[split], split)

    # list files are checked before any process group exists; the synthetic set needs rank 0 to go first
    dataset = None if cfg.data.synthetic else split_dataset()
    dist_utils.init_distributed()
    tune_cpu_process()
    rank, world, device = dist_utils.rank(), dist_utils.world_size(), dist_utils.device()
    if dataset is None:
        dataset = split_dataset()
    torch.manual_seed(cfg.run.seed)
    model = build_finetune_model(cfg)
    message = load_eval_weights(model, source)
    model.to(device)
    metrics, scores = evaluate(model, dataset, cfg.eval.batch_size, device, rank, world,
                               num_workers=cfg.data.num_workers, timeout_s=cfg.data.loader_timeout_s)
    if dist_utils.is_main():
        print(message, flush=True)
        write_results(output_dir, metrics, scores, record_paths(dataset), cfg.eval.save_scores)
    dist_utils.barrier()
    return metrics
