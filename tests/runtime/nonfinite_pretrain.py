"""Test-only entry point: launch/pretrain.py with the loss of one micro-step made NaN.

``MOTIONMAE_TEST_NAN_AT=k`` poisons the k-th (0-based) training micro-step this process computes, through the
task's loss hook; the production loop has no injection code. Used by tests/runtime/test_failures.py.
"""
import os
import runpy
import sys
from pathlib import Path

from motionmae_ds.train.pretrain import PretrainTask

PRETRAIN = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
AT = int(os.environ["MOTIONMAE_TEST_NAN_AT"])
_calls = [0]
_loss = PretrainTask.loss


def poisoned_loss(self, engine, batch, ctx):
    loss, stats, clips = _loss(self, engine, batch, ctx)
    if _calls[0] == AT:
        loss = loss * float("nan")
        stats = [loss, *stats[1:]]
    _calls[0] += 1
    return loss, stats, clips


PretrainTask.loss = poisoned_loss
sys.argv[0] = str(PRETRAIN)
runpy.run_path(str(PRETRAIN), run_name="__main__")
