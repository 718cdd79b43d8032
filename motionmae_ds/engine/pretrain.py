"""The pretraining run: build everything from the config, train under DeepSpeed, checkpoint, resume.

Every random draw is a function of the run's position, never of worker timing or of how often the run was
interrupted: data order comes from the sampler's (seed, epoch) permutation, clip sampling/crops from the
dataset's (seed, epoch, index), and masks plus any other torch randomness (drop path) from a generator
reseeded at every micro-step from (seed, epoch, micro-step, rank). A run resumed from a checkpoint therefore
retraces the uninterrupted run exactly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from motionmae_ds.config import ConfigError, ExperimentConfig, batch_layout, check_paths
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.engine import checkpoint as ckpt
from motionmae_ds.engine import distributed as dist_utils
from motionmae_ds.engine.builders import build_dataset, build_masker, build_model, resolve_list_file
from motionmae_ds.engine.cpu_process import tune_cpu_process
from motionmae_ds.engine.ds_config import fill_batch, load_ds_config
from motionmae_ds.engine.logging import RunLogger
from motionmae_ds.engine.optim import build_adamw, param_groups, set_lr_wd
from motionmae_ds.engine.sampler import DistributedSampler
from motionmae_ds.engine.schedule import Schedule, scaled_lr
from motionmae_ds.engine.throughput import FlopCounter


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped before the update, without saving."""


class TooManyBadVideosError(RuntimeError):
    """More than data.max_bad_fraction of an epoch's samples could not be decoded."""


@dataclass
class Position:
    """Where the run is: epochs and optimizer steps completed, micro-batches done in the current epoch."""
    epoch: int = 0
    step: int = 0
    micro_in_epoch: int = 0
    epoch_bad: int = 0
    epoch_seen: int = 0


def default_output_dir(cfg: ExperimentConfig) -> Path:
    stem = Path(cfg.source).stem if cfg.source.endswith((".yaml", ".yml")) else "pretrain"
    return Path("runs") / stem


def _seed_step(seed: int, epoch: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """Reseed torch's global RNG (drop path) and return the mask generator for this micro-step."""
    torch.manual_seed(derive_seed(seed, epoch, micro, rank, 1))
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, epoch, micro, rank, 2))
    return gen


class Trainer:
    """One pretraining run. ``run()`` returns a summary dict (rank 0 fills it, others get the same)."""

    def __init__(self, cfg: ExperimentConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                 resume: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        # config and data paths first: a typo should not wait for the process group and the comm build
        check_paths(cfg)
        load_ds_config(ds_config_path)
        dist_utils.init_distributed()
        tune_cpu_process()
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        self.out_dir = Path(output_dir) if output_dir else (Path(cfg.run.output_dir) if cfg.run.output_dir
                                                             else default_output_dir(cfg))
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.micro, self.accum, self.total_batch = batch_layout(cfg, self.world)
        self.ds_config = fill_batch(load_ds_config(ds_config_path), self.micro, self.accum, self.world,
                                    origin=str(ds_config_path), yaml_origin=cfg.source)

    # -- build ------------------------------------------------------------------------------------
    def _build(self) -> None:
        import deepspeed

        cfg = self.cfg
        list_file = resolve_list_file(cfg)
        self.dataset = build_dataset(cfg, list_file, mode="pretrain")
        self.list_file = list_file
        self.sampler = DistributedSampler(len(self.dataset), self.world, self.rank, seed=cfg.run.seed)
        self.micro_per_epoch = (self.sampler.per_rank // self.micro) // self.accum * self.accum
        if self.micro_per_epoch == 0:
            raise ConfigError(
                f"{cfg.source}: {len(self.dataset)} videos give no full optimizer step with schedule.batch_size="
                f"{self.micro} x accum {self.accum} x world size {self.world}")
        self.steps_per_epoch = self.micro_per_epoch // self.accum

        # identical initial weights on every rank, whatever ran before
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg)
        self.grid = tuple(model.grid)
        self.masker = build_masker(cfg, self.grid)
        self.flops = FlopCounter(cfg)
        groups = param_groups(model, cfg.optim.weight_decay)
        self.peak_lr = scaled_lr(cfg.optim.base_lr, self.total_batch)
        self.schedule = Schedule(self.peak_lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end,
                                 self.steps_per_epoch, cfg.schedule.epochs, cfg.schedule.warmup_epochs)
        optimizer = build_adamw(groups, self.peak_lr, cfg.optim.betas, cfg.optim.eps)
        if self.resume:
            # `latest` may name a universal checkpoint (launch/convert_checkpoint.py --format universal):
            # DeepSpeed must be told before initialize, and only then may the world size differ
            from motionmae_ds.tools.universal import prepare_resume

            self.ds_config = prepare_resume(self.ckpt_dir, self.ds_config)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=self.ds_config)

    def _loader(self, epoch: int, start_micro: int) -> DataLoader:
        from motionmae_ds.data.datasets import collate_clips

        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_micro * self.micro)
        workers = self.cfg.data.num_workers
        # persistent_workers=False: each epoch forks fresh workers, which carry the new set_epoch
        return DataLoader(self.dataset, batch_size=self.micro, sampler=self.sampler, num_workers=workers,
                          collate_fn=collate_clips, drop_last=True, persistent_workers=False,
                          timeout=self.cfg.data.loader_timeout_s if workers > 0 else 0)

    # -- checkpoint ---------------------------------------------------------------------------------
    def _save(self, pos: Position) -> None:
        counts = dist_utils.all_reduce_sum(torch.tensor([pos.epoch_bad, pos.epoch_seen], dtype=torch.float64))
        state = {
            "epoch": pos.epoch, "step": pos.step, "micro_in_epoch": pos.micro_in_epoch,
            "epoch_bad": int(counts[0]), "epoch_seen": int(counts[1]),
            "world_size": self.world, "config": self.cfg.to_dict(), "rng": ckpt.rng_state(),
        }
        if pos.step == self.saved_step:
            return  # e.g. the end of an epoch that a step checkpoint already covered
        tag = ckpt.tag_for(pos.step)
        ckpt.save(self.engine, self.ckpt_dir, tag, state, keep_last=self.cfg.run.keep_last)
        self.saved_step = pos.step
        self.log.info(f"checkpoint {self.ckpt_dir / tag} (epoch {pos.epoch}, step {pos.step})")
        if self.cfg.run.visualize and dist_utils.is_main():
            self._visualize(tag)
        dist_utils.barrier()

    def _visualize(self, tag: str) -> None:
        from motionmae_ds.tools.visualize import load_clip, render_reconstruction

        try:
            video = load_clip(self.cfg, self.cfg.data.vis_video or self._first_video())
            for ratio in (self.cfg.masking.ratio,):
                image = render_reconstruction(self.engine.module, video, self.cfg, ratio=ratio,
                                              seed=self.cfg.run.seed)
                path = self.out_dir / "vis" / f"{tag}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
        except Exception as exc:  # a figure must never kill a training run
            self.log.info(f"warning: reconstruction figure for {tag} failed: {type(exc).__name__}: {exc}")

    def _first_video(self) -> str:
        from motionmae_ds.data.lists import read_list

        records = read_list(self.list_file, fmt=self.cfg.data.list_format, root=self.cfg.data.root)
        return str(records[0].path)

    def _restore(self) -> Position:
        ckpt.remove_stale(self.ckpt_dir)
        dist_utils.barrier()
        if not self.resume:
            return Position()
        tag = ckpt.read_latest(self.ckpt_dir)
        if tag is not None and not self.engine.load_universal_checkpoint():
            saved = ckpt.saved_world_size(self.ckpt_dir, tag)
            if saved is not None and saved != self.world:
                raise ConfigError(f"{self.ckpt_dir / tag}: checkpoint was written by {saved} ranks, this run has "
                                  f"{self.world}; convert it to a universal checkpoint (launch/convert_checkpoint.py "
                                  f"--format universal) or use --no_resume")
        state = ckpt.load_latest(self.engine, self.ckpt_dir)
        if state is None:
            return Position()
        micro_in_epoch = state["micro_in_epoch"]
        saved_world = state.get("world_size", self.world)
        saved_micro = state["config"]["schedule"]["batch_size"]
        if (saved_world, saved_micro) != (self.world, self.micro):
            if not self.engine.load_universal_checkpoint():
                raise ConfigError(f"{self.ckpt_dir}: checkpoint was written by {saved_world} ranks, this run has "
                                  f"{self.world}; convert it to a universal checkpoint (launch/convert_checkpoint.py "
                                  f"--format universal) or use --no_resume")
            from motionmae_ds.tools.universal import rescale_micro_in_epoch

            try:
                micro_in_epoch = rescale_micro_in_epoch(micro_in_epoch, saved_world, saved_micro, self.world,
                                                        self.micro)
            except ValueError as exc:
                raise ConfigError(f"{self.ckpt_dir}: {exc}") from None
        ckpt.set_rng_state(state["rng"])
        pos = Position(epoch=state["epoch"], step=state["step"], micro_in_epoch=micro_in_epoch)
        if self.rank == 0:
            # the other ranks start from 0 so the epoch-end all-reduce counts each bad video once
            pos.epoch_bad, pos.epoch_seen = state["epoch_bad"], state["epoch_seen"]
        if pos.micro_in_epoch >= self.micro_per_epoch:
            pos.epoch, pos.micro_in_epoch, pos.epoch_bad, pos.epoch_seen = pos.epoch + 1, 0, 0, 0
        self.resumed_from = state["tag"]
        self.saved_step = pos.step
        return pos

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._build()
        self.resumed_from = None
        self.bad_pending: list[tuple[int, int, str, str]] = []
        self.saved_step = -1
        pos = self._restore()
        cfg = self.cfg
        self.log = RunLogger(self.out_dir, enabled=dist_utils.is_main(), resume_step=pos.step)
        self.log.write_config(cfg.to_dict(), extra={
            "world_size": self.world, "micro_batch": self.micro, "accum_steps": self.accum,
            "total_batch": self.total_batch, "peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
            "list_file": self.list_file, "ds_config": self.ds_config})
        if self.resumed_from:
            self.log.info(f"resumed from {self.ckpt_dir / self.resumed_from}: epoch {pos.epoch}, step {pos.step}")
        self.log.info(f"{len(self.dataset)} videos, {self.world} rank(s), batch {self.micro} x {self.accum} x "
                      f"{self.world} = {self.total_batch}, peak lr {self.peak_lr:.3g}, "
                      f"{self.steps_per_epoch} steps/epoch, output {self.out_dir}")
        summary = {"first_loss": None, "last_loss": None, "steps": pos.step, "resumed_from": self.resumed_from}
        try:
            while pos.epoch < cfg.schedule.epochs:
                self._train_epoch(pos, summary)
                if pos.epoch + 1 == cfg.schedule.epochs or (cfg.run.save_every_epochs
                                                          and (pos.epoch + 1) % cfg.run.save_every_epochs == 0):
                    self._save(pos)
                pos.epoch, pos.micro_in_epoch, pos.epoch_bad, pos.epoch_seen = pos.epoch + 1, 0, 0, 0
        finally:
            self.log.close()
        summary["steps"] = pos.step
        return summary

    def _train_epoch(self, pos: Position, summary: dict[str, Any]) -> None:
        from tqdm import tqdm

        cfg, engine = self.cfg, self.engine
        engine.train()
        loader = self._loader(pos.epoch, pos.micro_in_epoch)
        bar = tqdm(total=self.micro_per_epoch, initial=pos.micro_in_epoch, desc=f"epoch {pos.epoch}",
                   disable=not dist_utils.is_main(), dynamic_ncols=True, leave=False)
        meter = torch.zeros(3, dtype=torch.float64)
        meter_steps, grad_norm = 0, 0.0
        t_last = time.perf_counter()
        samples_since = 0
        batches = iter(loader)
        for micro in range(pos.micro_in_epoch, self.micro_per_epoch):
            batch = next(batches)
            self._note_bad(batch, pos)
            global_micro = pos.epoch * self.micro_per_epoch + micro
            lr, wd = self.schedule.lr(pos.step), self.schedule.wd(pos.step)
            set_lr_wd(engine.optimizer, lr, wd)
            gen = _seed_step(cfg.run.seed, pos.epoch, micro, self.rank, self.device)
            videos = batch["video"].to(self.device, non_blocking=True)
            mask = self.masker(videos.shape[0], device=self.device, generator=gen)
            out = engine(videos, mask)
            loss = out["loss"]
            if cfg.debug.inject_nonfinite_at_step is not None and global_micro == cfg.debug.inject_nonfinite_at_step:
                loss = loss * float("nan")
            stats = torch.stack([loss.detach(), out["loss_frame"].detach(), out["loss_motion"].detach()]).double().cpu()
            # every rank must take the same decision to stop, so decide on the all-reduced value
            stats = dist_utils.all_reduce_sum(stats) / self.world
            if not torch.isfinite(stats).all():
                latest = ckpt.read_latest(self.ckpt_dir)
                where = f"last good checkpoint {self.ckpt_dir / latest}" if latest else "no checkpoint written yet"
                raise NonFiniteLossError(
                    f"non-finite loss {stats[0].item()} at epoch {pos.epoch} step {pos.step + 1} (micro-step "
                    f"{global_micro}); stopped before the update without saving; {where}")
            engine.backward(loss)
            engine.step()
            meter += stats
            samples_since += videos.shape[0] * self.world
            bar.update(1)
            pos.micro_in_epoch = micro + 1
            if pos.micro_in_epoch % self.accum:
                continue
            pos.step += 1
            meter_steps += self.accum
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            last_of_epoch = pos.micro_in_epoch == self.micro_per_epoch
            if pos.step % cfg.run.log_every == 0 or last_of_epoch or pos.step == 1:
                elapsed = time.perf_counter() - t_last
                mean = (meter / meter_steps).tolist()
                sps = samples_since / elapsed if elapsed > 0 else 0.0
                record = {"epoch": pos.epoch, "step": pos.step, "loss": mean[0], "loss_frame": mean[1],
                          "loss_motion": mean[2], "lr": lr, "grad_norm": grad_norm, "samples_per_s": sps,
                          "tflops": self.flops.tflops_per_device(sps / self.world)}
                utilisation = self.flops.mfu(sps / self.world)
                if utilisation is not None:  # GPUs with a known bf16 peak only
                    record["mfu"] = utilisation
                self.log.log(record)
                summary["first_loss"] = mean[0] if summary["first_loss"] is None else summary["first_loss"]
                summary["last_loss"] = mean[0]
                bar.set_postfix(loss=f"{mean[0]:.4f}", lr=f"{lr:.2e}")
                meter.zero_()
                meter_steps, samples_since, t_last = 0, 0, time.perf_counter()
            if cfg.run.save_every_steps and pos.step % cfg.run.save_every_steps == 0 and not last_of_epoch:
                self._save(pos)
        bar.close()
        self._end_epoch_bad(pos)

    # -- bad videos ---------------------------------------------------------------------------------------
    def _note_bad(self, batch: dict[str, Any], pos: Position) -> None:
        skipped = batch.get("skipped") or []
        pos.epoch_seen += len(batch["video"])
        pos.epoch_bad += len(skipped)
        for path, reason in skipped:
            # rank 0 prints its own at once; every rank's are named in log.jsonl at the epoch end
            self.log.info(f"skipped bad video {path}: {reason}")
            self.bad_pending.append((self.rank, pos.step, str(path), str(reason)))

    def _end_epoch_bad(self, pos: Position) -> None:
        counts = dist_utils.all_reduce_sum(torch.tensor([pos.epoch_bad, pos.epoch_seen], dtype=torch.float64))
        bad, seen = int(counts[0]), int(counts[1])
        named = dist_utils.gather_objects(self.bad_pending)
        self.bad_pending = []
        for rank, step, path, reason in named:
            if rank != 0:
                self.log.info(f"skipped bad video {path}: {reason} (rank {rank})")
            self.log.log({"epoch": pos.epoch, "step": step, "bad_video": path, "reason": reason})
        if bad:
            self.log.info(f"epoch {pos.epoch}: {bad} of {seen} samples came from unreadable videos")
            self.log.log({"epoch": pos.epoch, "step": pos.step, "bad_videos": bad, "samples": seen})
        limit = self.cfg.data.max_bad_fraction
        if seen and bad / seen > limit:
            raise TooManyBadVideosError(
                f"epoch {pos.epoch}: {bad}/{seen} = {bad / seen:.1%} of samples were unreadable videos, above "
                f"data.max_bad_fraction={limit}; fix the list ({self.list_file}) or raise the limit")


def run_pretraining(cfg: ExperimentConfig, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                    resume: bool = True) -> dict[str, Any]:
    return Trainer(cfg, ds_config_path, output_dir, resume).run()
