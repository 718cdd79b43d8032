"""Test-only entry point: launch/pretrain.py, and rank 0 holds one checkpoint save open until the test says go.

``MOTIONMAE_TEST_HOLD_SAVE=DIR``: when rank 0 is about to name its first checkpoint in ``latest`` (every shard is
written, the tag is still ``.tmp-``), it creates ``DIR/saving`` and waits for ``DIR/go``. A test sends its signals
in between, so they arrive while a checkpoint is written, whatever the machine's speed.
``MOTIONMAE_TEST_FSIZE_AFTER_SAVE=BYTES``: once the first checkpoint is written, files of this process may not
grow beyond BYTES (``RLIMIT_FSIZE``, with SIGXFSZ ignored, so writes fail with EFBIG as on a full disk or quota).
Used by tests/runtime/test_preemption.py and tests/runtime/test_shared_machine.py.
"""
import os
import resource
import runpy
import signal
import sys
import time
from pathlib import Path

from motionmae_ds.checkpoint import engine_io
from motionmae_ds.train.pretrain import PretrainTask

PRETRAIN = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
HOLD = os.environ.get("MOTIONMAE_TEST_HOLD_SAVE")
FSIZE = os.environ.get("MOTIONMAE_TEST_FSIZE_AFTER_SAVE")

if HOLD:
    _write_latest = engine_io.write_latest
    _held = [False]

    def held_write_latest(ckpt_dir, tag, *args, **kwargs):
        if not _held[0]:
            _held[0] = True
            (Path(HOLD) / "saving").write_text(tag)
            while not (Path(HOLD) / "go").exists():
                time.sleep(0.01)
        return _write_latest(ckpt_dir, tag, *args, **kwargs)

    engine_io.write_latest = held_write_latest

if FSIZE:
    _on_checkpoint = PretrainTask.on_checkpoint

    def limited_after_first(self, run, tag):
        _on_checkpoint(self, run, tag)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(FSIZE), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    PretrainTask.on_checkpoint = limited_after_first

sys.argv[0] = str(PRETRAIN)
runpy.run_path(str(PRETRAIN), run_name="__main__")
