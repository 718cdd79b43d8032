"""Test-only entry point: launch/extract_features.py SIGKILLed right after it has written
``MOTIONMAE_TEST_KILL_AFTER`` video files, as a crash or an OOM kill would stop it; the production code has no
injection. Used by test_features.py."""
import os
import runpy
import signal
import sys
from pathlib import Path

from motionmae_ds.eval import features

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "extract_features.py"
AFTER = int(os.environ["MOTIONMAE_TEST_KILL_AFTER"])
_written = [0]
_write = features._write_video


def write_then_maybe_die(path, tensors, meta):
    _write(path, tensors, meta)
    if path.parent.name == features.VIDEO_DIR:
        _written[0] += 1
        if _written[0] == AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


features._write_video = write_then_maybe_die
sys.argv[0] = str(SCRIPT)
runpy.run_path(str(SCRIPT), run_name="__main__")
