"""The one training loop, for pretraining and finetuning alike: the task supplies model, data, loss and evaluation.

Every random draw is a function of the run's position, never of worker timing or of how often the run was
interrupted: data order comes from the sampler's (seed, epoch) permutation, clip sampling and augmentation from
the dataset's (seed, epoch, index), and masks, mixup and any other torch randomness (drop path) from generators
reseeded at every micro-step from (seed, epoch, micro-step, rank). A run resumed from a checkpoint, mid-epoch or
at another world size (through DeepSpeed's universal format), therefore retraces the uninterrupted run.

What the loop owns, so that both tasks have it: the DeepSpeed engine and its batch layout, the lr/wd schedule,
mid-epoch and epoch checkpoints with exact resume, the non-finite stop, bad-video counting, preemption
(SIGTERM/SIGUSR1: finish the step, save, exit with ``PREEMPTED_EXIT_CODE``), tqdm, log.jsonl and TensorBoard,
throughput and MFU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.config import ConfigError, batch_layout, check_paths
from motionmae_ds.data.loader import DistributedSampler, make_loader
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cpu_process import tune_cpu_process
from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config, offload_device
from motionmae_ds.runtime.errors import NonFiniteLossError, TooManyBadVideosError
from motionmae_ds.runtime.preemption import Preempted, PreemptionFlag
from motionmae_ds.train.logging import RunLogger
from motionmae_ds.train.optim import build_adamw, set_lr_wd
from motionmae_ds.train.schedule import Schedule, scaled_lr
from motionmae_ds.train.task import Position, StepContext, Task


def compile_blocks(model: nn.Module) -> int:
    """Regional compilation (``run.compile``): ``torch.compile`` every transformer block in place
    (``nn.Module.compile``). The module tree keeps its eager names, so state dicts and DeepSpeed checkpoints
    carry no ``_orig_mod.`` and load into compiled and eager runs alike; each block kind compiles once and
    its code is reused by every block of that shape. Returns the number of blocks compiled."""
    count = 0
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                block.compile()
                count += 1
    return count


def enable_tf32(device: torch.device) -> bool:
    """TF32 tensor cores for the fp32 matmuls and convolutions left on CUDA (bf16 runs have few: the fp32
    target and loss math); the CPU has no such mode. Returns whether it was switched on."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def seed_step(seed: int, epoch: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """Reseed torch's global RNG (drop path) and return the mask generator for this micro-step."""
    torch.manual_seed(derive_seed(seed, epoch, micro, rank, 1))
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, epoch, micro, rank, 2))
    return gen


class Trainer:
    """One run of ``task``. ``run()`` returns a summary dict (rank 0 fills it, others get the same)."""

    def __init__(self, task: Task, ds_config_path: str | Path, output_dir: Optional[str | Path] = None,
                 resume: bool = True) -> None:
        self.task, self.cfg, self.resume = task, task.cfg, resume
        cfg = self.cfg
        # config and paths first: a typo should not wait for the process group and the comm build
        check_paths(cfg)
        load_ds_config(ds_config_path)
        dist_utils.init_distributed()
        tune_cpu_process()
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        enable_tf32(self.device)
        stem = Path(cfg.source).stem if cfg.source.endswith((".yaml", ".yml")) else task.default_dir
        self.out_dir = Path(output_dir or cfg.run.output_dir or Path("runs") / stem)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.micro, self.accum, self.total_batch = batch_layout(cfg, self.world)
        task.check(self.micro)
        self.ds_config = fill_batch(load_ds_config(ds_config_path), self.micro, self.accum, self.world,
                                    origin=str(ds_config_path), yaml_origin=cfg.source)

    # -- build ------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, task = self.cfg, self.task
        self.dataset = task.build_train_set()
        self.sampler = DistributedSampler(len(self.dataset), self.world, self.rank, seed=cfg.run.seed)
        self.micro_per_epoch = (self.sampler.per_rank // self.micro) // self.accum * self.accum
        if self.micro_per_epoch == 0:
            raise ConfigError(
                f"{cfg.source}: {len(self.dataset)} videos give no full optimizer step with schedule.batch_size="
                f"{self.micro} x accum {self.accum} x world size {self.world}")
        self.steps_per_epoch = self.micro_per_epoch // self.accum

        # identical initial weights on every rank, whatever ran before
        torch.manual_seed(cfg.run.seed)
        model = task.build_model()
        if cfg.run.compile:
            compile_blocks(model)
        groups = task.param_groups(model)
        self.flops = task.flop_counter()
        self.peak_lr = scaled_lr(cfg.optim.base_lr, self.total_batch)
        self.schedule = Schedule(self.peak_lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end,
                                 self.steps_per_epoch, cfg.schedule.epochs, cfg.schedule.warmup_epochs)
        # fused on CUDA, unless ZeRO offloads the optimizer step to the CPU
        offloaded = offload_device(self.ds_config) != "none"
        optimizer = build_adamw(groups, self.peak_lr, cfg.optim.betas, cfg.optim.eps,
                                device_type="cpu" if offloaded else self.device.type)
        if self.resume:
            # `latest` may name a universal checkpoint (launch/convert_checkpoint.py --format universal):
            # DeepSpeed must be told before initialize, and only then may the world size differ
            self.ds_config = ckpt.prepare_resume(self.ckpt_dir, self.ds_config)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        task.setup(self)

    def _loader(self, epoch: int, start_micro: int) -> DataLoader:
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_micro * self.micro)
        return make_loader(self.dataset, self.sampler, self.micro, self.cfg.data.num_workers,
                           self.cfg.data.loader_timeout_s, self.device)

    # -- checkpoint ---------------------------------------------------------------------------------
    def _save(self, pos: Position) -> None:
        if pos.step == self.saved_step:
            return  # e.g. the end of an epoch that a step checkpoint already covered
        counts = dist_utils.all_reduce_sum(torch.tensor([pos.epoch_bad, pos.epoch_seen], dtype=torch.float64))
        state = {
            "kind": self.task.kind, "epoch": pos.epoch, "step": pos.step, "micro_in_epoch": pos.micro_in_epoch,
            "epoch_bad": int(counts[0]), "epoch_seen": int(counts[1]),
            "world_size": self.world, "config": self.cfg.to_dict(), "rng": ckpt.rng_state(),
            **self.task.client_state(),
        }
        tag = ckpt.tag_for(pos.step)
        ckpt.save(self.engine, self.ckpt_dir, tag, state, keep_last=self.cfg.run.keep_last)
        self.saved_step = pos.step
        self.log.info(f"checkpoint {self.ckpt_dir / tag} (epoch {pos.epoch}, step {pos.step})")
        self.task.on_checkpoint(self, tag)
        dist_utils.barrier()

    def _world_mismatch(self, saved: int) -> ConfigError:
        return ConfigError(f"{self.ckpt_dir}: checkpoint was written by {saved} ranks, this run has {self.world}; "
                           f"convert it to a universal checkpoint (launch/convert_checkpoint.py --format universal) "
                           f"or use --no_resume")

    def _restore(self) -> Position:
        ckpt.remove_stale(self.ckpt_dir)
        dist_utils.barrier()
        if not self.resume:
            return Position()
        universal = self.engine.load_universal_checkpoint()
        tag = ckpt.read_latest(self.ckpt_dir)
        if tag is not None and not universal:
            saved = ckpt.saved_world_size(self.ckpt_dir, tag)
            if saved is not None and saved != self.world:
                raise self._world_mismatch(saved)
        state = ckpt.load_latest(self.engine, self.ckpt_dir)
        if state is None:
            return Position()
        # finetune checkpoints of earlier versions were written at epoch ends only
        micro_in_epoch = state.get("micro_in_epoch", self.micro_per_epoch)
        saved_world = state.get("world_size", self.world)
        saved_micro = state["config"]["schedule"]["batch_size"]
        if (saved_world, saved_micro) != (self.world, self.micro):
            if not universal:
                raise self._world_mismatch(saved_world)
            try:
                micro_in_epoch = ckpt.rescale_micro_in_epoch(micro_in_epoch, saved_world, saved_micro, self.world,
                                                             self.micro)
            except ValueError as exc:
                raise ConfigError(f"{self.ckpt_dir}: {exc}") from None
        ckpt.set_rng_state(state["rng"])
        self.task.load_client_state(state)
        pos = Position(epoch=state["epoch"], step=state["step"], micro_in_epoch=micro_in_epoch)
        if self.rank == 0:
            # the other ranks start from 0 so the epoch-end all-reduce counts each bad video once
            pos.epoch_bad, pos.epoch_seen = state.get("epoch_bad", 0), state.get("epoch_seen", 0)
        if pos.micro_in_epoch >= self.micro_per_epoch:
            pos.next_epoch()
        self.resumed_from = state["tag"]
        self.saved_step = pos.step
        return pos

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._build()
        self.resumed_from: Optional[str] = None
        self.bad_pending: list[tuple[int, int, str, str]] = []
        self.saved_step = -1
        self.stop_requested = False
        pos = self._restore()
        cfg, task = self.cfg, self.task
        self.log = RunLogger(self.out_dir, enabled=dist_utils.is_main(), resume_step=pos.step)
        self.log.write_config(cfg.to_dict(), extra={
            "world_size": self.world, "micro_batch": self.micro, "accum_steps": self.accum,
            "total_batch": self.total_batch, "peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
            "ds_config": self.ds_config, **task.run_info()})
        for line in task.startup_lines():
            self.log.info(line)
        if self.resumed_from:
            self.log.info(f"resumed from {self.ckpt_dir / self.resumed_from}: epoch {pos.epoch}, step {pos.step}")
        self.log.info(task.describe(self))
        summary: dict[str, Any] = {"first_loss": None, "last_loss": None, "steps": pos.step,
                                   "resumed_from": self.resumed_from}
        flag = PreemptionFlag().install()
        self.preemption = flag
        try:
            while pos.epoch < cfg.schedule.epochs:
                self._train_epoch(pos, summary)
                last = pos.epoch + 1 == cfg.schedule.epochs
                task.end_epoch(self, pos, last, summary)
                if last or (cfg.run.save_every_epochs and (pos.epoch + 1) % cfg.run.save_every_epochs == 0):
                    self._save(pos)
                if self.stop_requested and not last:
                    self._preempt(pos)
                pos.next_epoch()
            summary["steps"] = pos.step
            task.finish(self, summary)
        finally:
            flag.restore()
            self.log.close()
        return summary

    def _preempt(self, pos: Position) -> None:
        """Every rank is here at the same step: write one checkpoint and stop."""
        self._flush_bad_names(pos)
        self._save(pos)
        where = self.ckpt_dir / ckpt.tag_for(pos.step)
        self.log.info(f"stop requested by a signal: saved {where} (epoch {pos.epoch}, step {pos.step}); "
                      f"run the same command to resume")
        raise Preempted(f"stopped on request at epoch {pos.epoch} step {pos.step}; checkpoint {where}")

    def _train_epoch(self, pos: Position, summary: dict[str, Any]) -> None:
        cfg, engine, task = self.cfg, self.engine, self.task
        engine.train()
        loader = self._loader(pos.epoch, pos.micro_in_epoch)
        bar = tqdm(total=self.micro_per_epoch, initial=pos.micro_in_epoch, desc=f"epoch {pos.epoch}",
                   disable=not dist_utils.is_main(), dynamic_ncols=True, leave=False)
        n_stats = len(task.stat_names)
        meter = torch.zeros(n_stats, dtype=torch.float64)
        meter_micro, samples_since, t_last = 0, 0, time.perf_counter()
        batches = iter(loader)
        for micro in range(pos.micro_in_epoch, self.micro_per_epoch):
            batch = next(batches)
            self._note_bad(batch, pos)
            lr, wd = self.schedule.lr(pos.step), self.schedule.wd(pos.step)
            set_lr_wd(engine.optimizer, lr, wd)
            gen = seed_step(cfg.run.seed, pos.epoch, micro, self.rank, self.device)
            ctx = StepContext(cfg.run.seed, pos.epoch, micro, self.rank, self.device, gen)
            loss, stats, clips = task.loss(engine, batch, ctx)
            # one all-reduce per micro-step carries the statistics and any rank's stop request, so every rank
            # takes the same decisions (stop on a non-finite loss, stop for preemption) at the same micro-step
            # (built on the device, reduced there, one copy to the host: the loop's one sync per micro-step)
            local = torch.stack([s.detach().double() for s in stats] + [torch.tensor(
                float(self.preemption.requested), dtype=torch.float64, device=stats[0].device)])
            reduced = dist_utils.all_reduce_sum(local).cpu()
            stats_mean = reduced[:n_stats] / self.world
            self.stop_requested = self.stop_requested or bool(reduced[n_stats] > 0)
            if not torch.isfinite(stats_mean).all():
                latest = ckpt.read_latest(self.ckpt_dir)
                where = f"last good checkpoint {self.ckpt_dir / latest}" if latest else "no checkpoint written yet"
                global_micro = pos.epoch * self.micro_per_epoch + micro
                raise NonFiniteLossError(
                    f"non-finite loss {stats_mean[0].item()} at epoch {pos.epoch} step {pos.step + 1} (micro-step "
                    f"{global_micro}); stopped before the update without saving; {where}")
            engine.backward(loss)
            engine.step()
            meter += stats_mean
            meter_micro += 1
            samples_since += clips * self.world
            bar.update(1)
            pos.micro_in_epoch = micro + 1
            if pos.micro_in_epoch % self.accum:
                continue
            pos.step += 1
            task.after_step(engine, pos.step)
            last_of_epoch = pos.micro_in_epoch == self.micro_per_epoch
            if pos.step % cfg.run.log_every == 0 or last_of_epoch or pos.step == 1:
                elapsed = time.perf_counter() - t_last
                means = (meter / meter_micro).tolist()
                rate = samples_since / elapsed if elapsed > 0 else 0.0
                grad_norm = engine.get_global_grad_norm()
                record = {"epoch": pos.epoch, "step": pos.step, **task.record(means), "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                          task.rate_key: rate, "tflops": self.flops.tflops_per_device(rate / self.world)}
                utilisation = self.flops.mfu(rate / self.world)
                if utilisation is not None:  # GPUs with a known bf16 peak only
                    record["mfu"] = utilisation
                self.log.log(record)
                summary["first_loss"] = means[0] if summary["first_loss"] is None else summary["first_loss"]
                summary["last_loss"] = means[0]
                bar.set_postfix(loss=f"{means[0]:.4f}", lr=f"{lr:.2e}")
                meter.zero_()
                meter_micro, samples_since, t_last = 0, 0, time.perf_counter()
            if last_of_epoch:
                break  # the epoch's end (validation, its checkpoint, a pending stop) is the caller's
            if self.stop_requested:
                bar.close()
                self._preempt(pos)
            if cfg.run.save_every_steps and pos.step % cfg.run.save_every_steps == 0:
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

    def _flush_bad_names(self, pos: Position) -> None:
        named = dist_utils.gather_objects(self.bad_pending)
        self.bad_pending = []
        for rank, step, path, reason in named:
            if rank != 0:
                self.log.info(f"skipped bad video {path}: {reason} (rank {rank})")
            self.log.log({"epoch": pos.epoch, "step": step, "bad_video": path, "reason": reason})

    def _end_epoch_bad(self, pos: Position) -> None:
        counts = dist_utils.all_reduce_sum(torch.tensor([pos.epoch_bad, pos.epoch_seen], dtype=torch.float64))
        bad, seen = int(counts[0]), int(counts[1])
        self._flush_bad_names(pos)
        if bad:
            self.log.info(f"epoch {pos.epoch}: {bad} of {seen} samples came from unreadable videos")
            self.log.log({"epoch": pos.epoch, "step": pos.step, "bad_videos": bad, "samples": seen})
        limit = self.cfg.data.max_bad_fraction
        if seen and bad / seen > limit:
            raise TooManyBadVideosError(
                f"epoch {pos.epoch}: {bad}/{seen} = {bad / seen:.1%} of samples were unreadable videos, above "
                f"data.max_bad_fraction={limit}; fix the list ({self.task.train_list}) or raise the limit")
