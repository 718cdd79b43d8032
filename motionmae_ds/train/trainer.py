"""The one training loop, for pretraining and finetuning alike: the task supplies model, data, loss and evaluation.

Every random draw is a function of the run's position, never of worker timing or of how often the run was
interrupted: data order comes from the sampler's (seed, epoch) permutation, clip sampling and augmentation from
the dataset's (seed, epoch, index), and masks, mixup and any other torch randomness (drop path) from generators
reseeded at every micro-step from (seed, epoch, micro-step, rank). A run resumed from a checkpoint, mid-epoch or
at another world size (through DeepSpeed's universal format), therefore retraces the uninterrupted run.

What the loop owns, so that both tasks have it: the DeepSpeed engine and its batch layout, the lr/wd schedule,
the non-finite stop, preemption (SIGTERM/SIGUSR1: finish the step, save, exit with ``PREEMPTED_EXIT_CODE``), the
console (a progress bar on a terminal or plain lines in a file, a line per epoch, the wall time at the end), the log
rows (log.jsonl and TensorBoard), throughput and MFU. It composes the parts that have a home of their own: the run's
position, log meter and bad-video counts (``train/state.py``), the checkpoint cadence, keep-last and resume checks
(``checkpoint/manager.py``), the run's record and what a relaunch may resume (``checkpoint/run_record.py``), and the
task's hooks, which see a ``RunContext``, not the trainer.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from motionmae_ds.builders import build_engine, compile_blocks
from motionmae_ds.checkpoint.layout import RUN_CHECKPOINTS
from motionmae_ds.checkpoint.manager import CheckpointManager
from motionmae_ds.checkpoint.run_record import ResumePlan, RunRecord, plan_resume
from motionmae_ds.config import ConfigError, batch_layout, check_paths
from motionmae_ds.data.decode import torchcodec as torchcodec_backend
from motionmae_ds.data.loader import DistributedSampler, make_loader
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cli import check_output_dir, is_main_process, output_dir_of
from motionmae_ds.runtime.cpu_process import tune_cpu_process
from motionmae_ds.runtime.distributed import enable_tf32
from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config
from motionmae_ds.runtime.errors import NonFiniteLossError
from motionmae_ds.runtime.preemption import Preempted, PreemptionFlag
from motionmae_ds.train.logging import Progress, RunLogger, clock, epoch_line
from motionmae_ds.train.optim import set_lr_wd
from motionmae_ds.train.schedule import Schedule, scaled_lr
from motionmae_ds.train.state import TrainState
from motionmae_ds.train.task import RunContext, StepContext, Task

# the share of a logging window's time the steps may wait for the loader before the run says so (once)
DATA_WAIT_WARNING = 0.10


def data_wait_warning(share: float, per_step_s: float, workers: int) -> str:
    return (f"warning: the steps waited for data {share:.0%} of the time ({per_step_s:.3f} s per step, data_wait in "
            f"log.jsonl): the loader holds training back. Remedies: more loader workers (data.num_workers, now "
            f"{workers}; bench/data_throughput.py sizes them), repeated sampling (data.num_repeats: several clips "
            f"per decoded video), videos re-encoded for training (launch/prepare_data.py --reencode). Shown once")


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
        self.started = time.perf_counter()
        self.task, self.cfg = task, task.cfg
        cfg = self.cfg
        # config, paths and the run directory first: a typo, a full disk, a relaunch with another config or a
        # missing decoder library should not wait for the process group and the comm build
        check_paths(cfg)
        ds_json = load_ds_config(ds_config_path)
        self.ds_config_path = str(ds_config_path)
        self.out_dir = output_dir_of(cfg, output_dir, task.default_dir)
        check_output_dir(self.out_dir)
        self.record = RunRecord(self.out_dir)
        self.plan = (plan_resume(self.out_dir, task.kind, cfg.to_dict(), type(cfg)().to_dict(), ds_json) if resume
                     else ResumePlan("fresh"))
        if self.plan.action == "complete":
            return  # run() says so and touches nothing
        if cfg.data.decode_backend == "torchcodec":
            torchcodec_backend.require()
        dist_utils.init_distributed()
        tune_cpu_process()
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        enable_tf32(self.device)
        self.micro, self.accum, self.total_batch = batch_layout(cfg, self.world)
        task.check(self.micro)
        self.ds_config = fill_batch(load_ds_config(ds_config_path), self.micro, self.accum, self.world,
                                    origin=str(ds_config_path), yaml_origin=cfg.source)
        run = cfg.run
        self.checkpoints = CheckpointManager(self.out_dir / RUN_CHECKPOINTS, self.world, self.micro,
                                             cfg.schedule.epochs, run.save_every_steps, run.save_every_epochs,
                                             run.keep_last, resume)
        self.log = RunLogger(self.out_dir, enabled=dist_utils.is_main())

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
        steps_per_epoch = self.micro_per_epoch // self.accum

        # identical initial weights on every rank, whatever ran before
        torch.manual_seed(cfg.run.seed)
        model = task.build_model()
        if cfg.run.compile:
            compile_blocks(model)
        groups = task.param_groups(model)
        self.flops = task.flop_counter()
        peak_lr = scaled_lr(cfg.optim.base_lr, self.total_batch)
        self.schedule = Schedule(peak_lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end,
                                 steps_per_epoch, cfg.schedule.epochs, cfg.schedule.warmup_epochs)
        self.ds_config = self.checkpoints.prepare(self.ds_config)
        self.engine = build_engine(model, groups, cfg, self.ds_config, peak_lr, self.device)
        self.ctx = RunContext(self.engine, self.device, self.rank, self.world, self.out_dir, self.log, self.micro,
                              self.accum, self.total_batch, peak_lr, steps_per_epoch)
        task.setup(self.ctx)

    def _loader(self, epoch: int, start_micro: int) -> DataLoader:
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_micro * self.micro)
        return make_loader(self.dataset, self.sampler, self.micro, self.cfg.data.num_workers,
                           self.cfg.data.loader_timeout_s, self.device)

    # -- checkpoint ---------------------------------------------------------------------------------
    def _save(self, state: TrainState) -> None:
        client = {"kind": self.task.kind, "config": self.cfg.to_dict(), **state.state_dict(),
                  **self.task.client_state()}
        tag = self.checkpoints.save(self.engine, state.step, client)
        if tag is None:
            return
        self.log.info(f"checkpoint {self.checkpoints.ckpt_dir / tag} (epoch {state.epoch}, step {state.step})")
        self.task.on_checkpoint(self.ctx, tag)
        dist_utils.barrier()

    def _restore(self) -> TrainState:
        state = TrainState(self.micro_per_epoch, self.rank, self.task.stat_names)
        client = self.checkpoints.restore(self.engine)
        self.resumed_from: Optional[str] = None
        if client is not None:
            self.task.load_client_state(client)
            state.load_state_dict(client)
            self.resumed_from = client["tag"]
        return state

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.plan.action == "complete":
            if is_main_process():
                print(self.plan.message, flush=True)
            return {"first_loss": None, "last_loss": None, "steps": None, "resumed_from": None, "complete": True}
        self._build()
        state = self._restore()
        cfg, task, ctx = self.cfg, self.task, self.ctx
        self.log.open(resume_step=state.step)
        self._write_record(state)
        for line in task.startup_lines():
            self.log.info(line)
        if self.resumed_from:
            self.log.info(f"resumed from {self.checkpoints.ckpt_dir / self.resumed_from}: epoch {state.epoch}, "
                          f"step {state.step}")
        self.log.info(task.describe(ctx))
        self.log.info(f"device: {self.device.type} ({self.world} rank(s), DeepSpeed's accelerator; DS_ACCELERATOR "
                      f"picks another)")
        summary: dict[str, Any] = {"first_loss": None, "last_loss": None, "steps": state.step,
                                   "resumed_from": self.resumed_from}
        self.stop_requested = False
        self.warned_data_wait = False
        self.postfix: dict[str, str] = {}
        self.total_steps = ctx.steps_per_epoch * cfg.schedule.epochs
        self.loop_started, self.loop_first_step = time.perf_counter(), state.step
        self.preemption = PreemptionFlag().install()
        # the stop request's slot in the step's all-reduce: made on the device once and filled in place when a
        # signal arrives, so a step copies nothing from the host for it (a CUDA fill_ takes the scalar as an
        # argument of its kernel)
        self.stop_flag = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            while state.epoch < cfg.schedule.epochs:
                self._train_epoch(state, summary)
                last = state.epoch + 1 == cfg.schedule.epochs
                task.end_epoch(ctx, state, last, summary)
                if self.checkpoints.epoch_due(state.epoch, state.step):
                    self._save(state)
                if self.stop_requested and not last:
                    self._preempt(state)
                state.next_epoch()
            summary["steps"] = state.step
            task.finish(ctx, summary)
            self._complete(state)
        finally:
            self.preemption.restore()
            self.log.close()
        return summary

    # -- the run's record ------------------------------------------------------------------------------
    def _write_record(self, state: TrainState) -> None:
        """A run from step 0 writes its config and info once; a resume appends to the history (rank 0)."""
        if not dist_utils.is_main():
            return
        ctx = self.ctx
        event = {"step": state.step, "epoch": state.epoch, "world_size": self.world, "micro_batch": self.micro,
                 "accum_steps": self.accum}
        if self.resumed_from is None or self.record.config() is None:
            info = {"kind": self.task.kind, "world_size": self.world, "micro_batch": self.micro,
                    "accum_steps": self.accum, "total_batch": self.total_batch, "peak_lr": ctx.peak_lr,
                    "steps_per_epoch": ctx.steps_per_epoch, "ds_config_file": self.ds_config_path,
                    "ds_config": self.ds_config, **self.task.run_info()}
            start = {"event": "start" if self.resumed_from is None else "resume", **event}
            if self.resumed_from is not None:
                start["tag"] = self.resumed_from  # a run recorded before the record existed
            self.record.start(self.cfg.to_dict(), info, start)
            return
        changed = {c.key: [c.recorded, c.requested] for c in self.plan.safe_changes}
        self.record.append({"event": "resume", "tag": self.resumed_from, **event, "changed": changed})
        if changed:
            self.log.info("resume-safe settings changed since the run started (recorded -> requested): "
                          + "; ".join(c.line() for c in self.plan.safe_changes))

    def _complete(self, state: TrainState) -> None:
        """The last lines of a finished run: its completion in the history, the wall time on the console."""
        wall = time.perf_counter() - self.started
        latest = self.checkpoints.latest()
        if dist_utils.is_main():
            self.record.append({"event": "complete", "tag": latest.name if latest else None, "step": state.step,
                                "wall_s": round(wall, 1)})
        trained = state.step - self.loop_first_step
        self.log.info(f"finished: {state.step} steps ({trained} in this process), wall time {clock(wall)} "
                      f"({wall:.1f} s)")

    def _epoch_line(self, state: TrainState, lr: float, sums: torch.Tensor, micro_steps: int, clips: int,
                    wait_s: float, started: float) -> None:
        now = time.perf_counter()
        took = now - started
        means = (sums / max(micro_steps, 1)).tolist()
        done = state.step - self.loop_first_step
        remaining = (now - self.loop_started) / done * (self.total_steps - state.step) if done > 0 else None
        self.log.info(epoch_line(state.epoch, self.cfg.schedule.epochs, state.step, self.total_steps,
                                 self.task.record(means), lr, clips / took if took > 0 else 0.0,
                                 wait_s / took if took > 0 else 0.0, now - self.started, remaining))

    def _preempt(self, state: TrainState) -> None:
        """Every rank is here at the same step: write one checkpoint and stop."""
        state.bad_videos.flush_names(state.epoch, self.log)
        self._save(state)
        where = self.checkpoints.latest()
        self.log.info(f"stop requested by a signal: saved {where} (epoch {state.epoch}, step {state.step}); "
                      f"run the same command to resume")
        raise Preempted(f"stopped on request at epoch {state.epoch} step {state.step}; checkpoint {where}")

    def _train_epoch(self, state: TrainState, summary: dict[str, Any]) -> None:
        cfg, engine, task = self.cfg, self.engine, self.task
        engine.train()
        epoch_started = time.perf_counter()
        loader = self._loader(state.epoch, state.micro_in_epoch)
        bar = Progress(self.micro_per_epoch, state.micro_in_epoch, f"epoch {state.epoch}", dist_utils.is_main())
        bar.set_postfix(**self.postfix)  # the last log row's, until this epoch logs its own
        n_stats = len(task.stat_names)
        # the epoch line's averages: the statistics are on the host already (the step's one copy), so they cost
        # nothing more
        epoch_sums, epoch_micro, epoch_clips, epoch_wait = torch.zeros(n_stats, dtype=torch.float64), 0, 0, 0.0
        batches = iter(loader)
        lr = self.schedule.lr(state.step)
        for micro in range(state.micro_in_epoch, self.micro_per_epoch):
            waiting = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - waiting
            state.meter.add_wait(waited)
            epoch_wait += waited
            state.bad_videos.note(batch, state.step, self.log)
            lr, wd = self.schedule.lr(state.step), self.schedule.wd(state.step)
            set_lr_wd(engine.optimizer, lr, wd)
            gen = seed_step(cfg.run.seed, state.epoch, micro, self.rank, self.device)
            ctx = StepContext(cfg.run.seed, state.epoch, micro, self.rank, self.device, gen)
            loss, stats, clips = task.loss(engine, batch, ctx)
            # one all-reduce per micro-step carries the statistics and any rank's stop request, so every rank
            # takes the same decisions (stop on a non-finite loss, stop for preemption) at the same micro-step
            # (built on the device, reduced there, one copy to the host: the loop's one sync per micro-step)
            if self.preemption.requested:
                self.stop_flag.fill_(1.0)
            local = torch.stack([s.detach().double() for s in stats] + [self.stop_flag])
            reduced = dist_utils.all_reduce_sum(local).cpu()
            stats_mean = reduced[:n_stats] / self.world
            self.stop_requested = self.stop_requested or bool(reduced[n_stats] > 0)
            if not torch.isfinite(stats_mean).all():
                latest = self.checkpoints.latest()
                where = f"last good checkpoint {latest}" if latest else "no checkpoint written yet"
                global_micro = state.epoch * self.micro_per_epoch + micro
                raise NonFiniteLossError(
                    f"non-finite loss {stats_mean[0].item()} at epoch {state.epoch} step {state.step + 1} (micro-step "
                    f"{global_micro}); stopped before the update without saving; {where}")
            engine.backward(loss)
            engine.step()
            state.meter.add(stats_mean, clips * self.world)
            epoch_sums += stats_mean
            epoch_micro, epoch_clips = epoch_micro + 1, epoch_clips + clips * self.world
            bar.update(1)
            state.micro_in_epoch = micro + 1
            if state.micro_in_epoch % self.accum:
                continue
            state.step += 1
            task.after_step(engine, state.step)
            last_of_epoch = state.epoch_done
            if state.step % cfg.run.log_every == 0 or last_of_epoch or state.step == 1:
                self._log_row(state, lr, summary, bar)
            if last_of_epoch:
                break  # the epoch's end (validation, its checkpoint, a pending stop) is the caller's
            if self.stop_requested:
                bar.close()
                self._preempt(state)
            if self.checkpoints.step_due(state.step):
                self._save(state)
        bar.close()
        self._epoch_line(state, lr, epoch_sums, epoch_micro, epoch_clips, epoch_wait, epoch_started)
        state.bad_videos.end_epoch(state.epoch, state.step, self.log, cfg.data.max_bad_fraction, task.train_list)

    def _log_row(self, state: TrainState, lr: float, summary: dict[str, Any], bar: Progress) -> None:
        """One log row: the meter's averages since the last row, lr, gradient norm, throughput, and how long the
        steps waited for the loader (rank 0's wait: ``data_wait_s`` per optimizer step, ``data_wait`` its share
        of the window's wall time); above ``DATA_WAIT_WARNING`` the run says so, once."""
        means, rate = state.meter.means(), state.meter.rate()
        grad_norm = self.engine.get_global_grad_norm()
        record = {"epoch": state.epoch, "step": state.step, **self.task.record(means), "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                  self.task.rate_key: rate, "tflops": self.flops.tflops_per_device(rate / self.world)}
        utilisation = self.flops.mfu(rate / self.world)
        if utilisation is not None:  # GPUs with a known bf16 peak only
            record["mfu"] = utilisation
        record["data_wait_s"], record["data_wait"] = state.meter.data_wait(self.accum)
        self.log.log(record)
        if record["data_wait"] > DATA_WAIT_WARNING and not self.warned_data_wait:
            self.warned_data_wait = True
            self.log.info(data_wait_warning(record["data_wait"], record["data_wait_s"], self.cfg.data.num_workers))
        summary["first_loss"] = means[0] if summary["first_loss"] is None else summary["first_loss"]
        summary["last_loss"] = means[0]
        self.postfix = {"loss": f"{means[0]:.4f}", "lr": f"{lr:.2e}"}
        bar.set_postfix(**self.postfix)
        state.meter.reset()
