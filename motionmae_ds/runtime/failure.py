"""What a rank does when another rank of a multi-node job dies or hangs.

The process group is created by ``deepspeed.init_distributed`` with the run's collective timeout
(``distributed.collective_timeout``: ``MOTIONMAE_COLLECTIVE_TIMEOUT_S`` seconds, else ``DEEPSPEED_TIMEOUT``
minutes, else 30 minutes), and ``distributed.init_distributed`` gives ZeRO's data-parallel group the same
timeout, so every collective is bounded: a dead peer shows up at once as a closed connection (gloo) or a
watchdog error (NCCL), a frozen peer after the timeout. On NCCL the watchdog is told to abort the
communicators and leave the process alive (``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` unless set), so the rank's
next collective raises here instead of the watchdog killing the process with SIGABRT. Either way
the surviving rank gets an exception deep inside a collective, whose traceback says little to a user.
``guard_peer_failure`` turns that into one line and a distinct exit code, so the node's launcher exits
non-zero and a scheduler (or the user) relaunches the same command, which resumes from ``latest``.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Callable, TextIO

from motionmae_ds.runtime.errors import EXIT_PEER_LOST

PEER_FAILURE_EXIT_CODE = EXIT_PEER_LOST

# fragments of the messages gloo, NCCL and the c10d store raise when the other side is gone or silent
_PEER_SIGNS = (
    "connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout",
    "socket closed", "ncclremoteerror", "ncclsystemerror", "watchdog", "remote process exited",
    "connection refused", "eof", "aborted",
)


def is_peer_failure(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank died or stopped answering."""
    import torch.distributed as dist

    # DistBackendError / DistNetworkError / DistStoreError: raised by c10d itself
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    if not isinstance(exc, (RuntimeError, ConnectionError)):
        return False
    text = str(exc).lower()
    from_backend = any(name in text for name in ("gloo", "nccl", "c10d", "tcp"))
    return from_backend and any(sign in text for sign in _PEER_SIGNS)


def peer_failure_message(exc: BaseException) -> str:
    """One line: which rank noticed, on which host, what the backend said, and what to do next."""
    rank = os.environ.get("RANK", "?")
    world = os.environ.get("WORLD_SIZE", "?")
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    # gloo prefixes its messages with the source path; keep the part a user can act on
    detail = first.split("] ", 1)[-1].split(". ", 1)[0][:200]
    return (f"error: rank {rank}/{world} on {socket.gethostname()} lost contact with another rank "
            f"({detail}); stopping this node. Check the other nodes' logs for the first failure, then rerun "
            f"the same command: it resumes from the output directory's checkpoints/latest")


def guard_peer_failure(main: Callable[[], int], stream: TextIO | None = None) -> int:
    """Run ``main()``; a lost peer becomes one line on stderr and exit code 5 instead of a traceback."""
    try:
        return main()
    except Exception as exc:
        if not is_peer_failure(exc):
            raise
        sys.stdout.flush()
        # a progress bar may own the current line of stderr; the message gets a line of its own
        print("\n" + peer_failure_message(exc), file=stream or sys.stderr, flush=True)
        # skip interpreter teardown: destroying a process group whose peer is gone can block on some backends
        os._exit(PEER_FAILURE_EXIT_CODE)
