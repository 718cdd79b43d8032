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
    """Installs handlers for SIGTERM and SIGUSR1 that record the request; ``restore()`` puts back the old ones."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionFlag":
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a run started from a test thread): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        # a second signal changes nothing: the step in flight and the save still have to finish
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
