"""Stop a run cleanly when the scheduler says it is about to end it.

SLURM sends SIGTERM before it kills or requeues a job (and SIGUSR1 ahead of time when the job asks for it with
``--signal``); other schedulers send SIGTERM. The handler only sets a flag: the training loop folds the flag into
the all-reduce it already does every micro-step, so every rank learns of the request at the same micro-step
whichever rank was signalled, finishes the optimizer step it is in, writes one complete checkpoint and leaves
with ``PREEMPTED_EXIT_CODE``. Running the same command again resumes from that checkpoint.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Optional

from motionmae_ds.runtime.errors import EXIT_PREEMPTED

# launch/slurm_pretrain.sbatch requeues the job on this code (runtime/errors.py holds the whole table)
PREEMPTED_EXIT_CODE = EXIT_PREEMPTED
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A stop was requested by a signal; the checkpoint named in the message holds the run's position."""


class PreemptionFlag:
    """Installs handlers for SIGTERM and SIGUSR1 that record the request; ``restore()`` puts back the old ones.

    Ctrl-C (SIGINT) still raises KeyboardInterrupt at once, and from then on the stop signals are ignored: a terminal
    sends SIGINT to every process of the job, and DeepSpeed's launcher answers it by sending SIGTERM to its ranks,
    which must not cut short a rank's removal of a partial checkpoint and its one line (runtime/cli.py). The
    launcher kills what is left 30 s later."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.interrupted = False
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionFlag":
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a run started from a test thread): no handler
                pass
        # only where Ctrl-C would interrupt anyway (a job started with SIGINT ignored keeps it ignored)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
            except ValueError:
                pass
        return self

    def _interrupt(self, signum: int, frame: Optional[FrameType]) -> None:
        self.interrupted = True
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        # a second signal changes nothing: the step in flight and the save still have to finish
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            if self.interrupted and sig in SIGNALS:
                continue  # stays ignored until the process has left (see the class docstring)
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
