"""Finetuning stops on SIGUSR1 (through the launcher, signalled as the README's pkill does) and SIGTERM (in this
process) with a checkpoint and exit 75 / ``Preempted``; a loader that holds the steps back shows in every log row
(``data_wait_s``, ``data_wait``) and the run warns once, naming the remedies."""
import os
import signal
import time

import pytest
from torch.utils.data import Dataset

from motionmae_ds.runtime.preemption import PREEMPTED_EXIT_CODE, Preempted
from motionmae_ds.train.finetune import FinetuneTask
from motionmae_ds.train.pretrain import PretrainTask
from tests.finetune_support import motion_lists, write_config
from tests.helpers import ZERO2, launch_cmd, pkill_run, read_log, start, train_in_process


class TermAfter(FinetuneTask):
    """Finetuning that signals itself (SIGTERM) right after optimizer step 2."""

    def after_step(self, engine, step: int) -> None:
        super().after_step(engine, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_finetuning_stops_with_75_on_sigusr1_and_sigterm(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "val_list": lists["val"],
                                                   "num_workers": 1},
                       run={"save_every_steps": 0, "save_every_epochs": 2})
    out = tmp_path / "usr1"
    proc = start(launch_cmd("finetune.py", ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], 1),
                 tmp_path / "usr1.txt")
    # the rank and its loader worker, as `pkill -USR1 -f -- 'launch/finetune.py --local_rank='` signals them
    code = pkill_run(proc, "USR1", "launch/finetune.py --local_rank=",
                     lambda: any(r["step"] >= 2 for r in read_log(out)), "training steps")
    text = (tmp_path / "usr1.txt").read_text()
    assert code == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "stopped: stopped on request" in text and "Traceback" not in text, text[-3000:]
    assert (out / "checkpoints" / "latest").is_file()

    with pytest.raises(Preempted, match="at epoch 0 step 3; checkpoint"):
        train_in_process("finetune", cfg, tmp_path / "term", task=TermAfter)
    assert (tmp_path / "term" / "checkpoints" / "latest").read_text().strip() == "step00000003"


class SlowVideos(Dataset):
    """The training set, each clip 0.5 s late: a loader far slower than the tiny model's step."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        time.sleep(0.5)
        return self.inner[index]

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


class SlowLoader(PretrainTask):
    def build_train_set(self):
        return SlowVideos(super().build_train_set())


def test_data_starvation_is_logged_and_warned_once(tiny_config, tmp_path):
    # 12 videos, batch 2: 6 steps per epoch, 2 epochs, a row every 2 steps; every step waits >= 1 s for data
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2}, run={"log_every": 2})
    _, stdout = train_in_process("pretrain", cfg, tmp_path / "slow", task=SlowLoader)
    rows = read_log(tmp_path / "slow")
    assert [r["step"] for r in rows] == [1, 2, 4, 6, 8, 10, 12]
    for r in rows:
        # two clips of 0.5 s each per step; the share of the window's wall time is at most all of it
        assert r["data_wait_s"] >= 1.0 and 0.1 < r["data_wait"] <= 1.0, r
    warnings = [line for line in stdout.splitlines() if "waited for data" in line]
    assert len(warnings) == 1, stdout[-3000:]
    for remedy in ("data.num_workers", "data.num_repeats", "--reencode", "bench/data_throughput.py"):
        assert remedy in warnings[0], warnings[0]
