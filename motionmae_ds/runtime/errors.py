"""The errors a run stops on and the exit code each becomes (``runtime/cli.py`` maps them), in one table.

A scheduler script reads the code: 75 means "requeue the same command" (it resumes from ``latest``), 5 "a node
failed, look at the other logs, then rerun", 2-4 "a person must change something first".
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2          # bad config, arguments or input files
EXIT_NON_FINITE = 3      # the loss became NaN/inf
EXIT_BAD_DATA = 4        # too many unreadable videos, or unreadable data where none may be skipped
EXIT_PEER_LOST = 5       # another rank died or stopped answering (runtime/failure.py)
EXIT_PREEMPTED = 75      # stopped by SIGTERM/SIGUSR1 after writing a checkpoint (runtime/preemption.py); EX_TEMPFAIL


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped before the update, without saving."""


class TooManyBadVideosError(RuntimeError):
    """More than data.max_bad_fraction of an epoch's samples could not be decoded."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, a quota, a file-size limit): its partial files were removed and
    the previous checkpoint and ``latest`` are intact; exit code ``EXIT_CONFIG`` (a person must free space)."""
