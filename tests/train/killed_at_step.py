"""Test-only entry point: launch/pretrain.py or launch/finetune.py (``MOTIONMAE_TEST_KILL_ENTRY``; or another
test-only entry point that runs one of them, ``MOTIONMAE_TEST_KILL_SCRIPT``), killed with SIGKILL
as a whole — launcher, every rank, every loader worker — when the first rank reaches optimizer step
``MOTIONMAE_TEST_KILL_AT_STEP`` (after that step's update, before its log row and checkpoint).

kill -9 at a known step, whatever the machine's speed: a test that killed from outside once it saw a checkpoint and
steps past it could find the run already finished on a loaded machine. The log then holds exactly the steps
before it; every rank has passed the all-reduces of the steps since its last checkpoint, so that checkpoint is
complete. Used by the kill -9 resume tests (tests/train/test_resume.py and its peers).
"""
import os
import runpy
import signal
import sys
from pathlib import Path

from motionmae_ds.train.finetune import FinetuneTask
from motionmae_ds.train.pretrain import PretrainTask

ENTRY = os.environ["MOTIONMAE_TEST_KILL_ENTRY"]
KILL_AT = int(os.environ["MOTIONMAE_TEST_KILL_AT_STEP"])
SCRIPT = Path(os.environ.get("MOTIONMAE_TEST_KILL_SCRIPT") or Path(__file__).resolve().parents[2] / "launch" /
              f"{ENTRY}.py")
TASK = {"pretrain": PretrainTask, "finetune": FinetuneTask}[ENTRY]

_after_step = TASK.after_step


def killed_at(self, engine, step: int) -> None:
    _after_step(self, engine, step)
    if step == KILL_AT:
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the test started the run in a process group of its own


TASK.after_step = killed_at
sys.argv[0] = str(SCRIPT)
runpy.run_path(str(SCRIPT), run_name="__main__")
