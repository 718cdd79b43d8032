"""A loader workers' start hook for tests/data/test_worker_start.py, in a module of its own so that a worker
imports nothing more than it (the forkserver preloads the rest)."""
from __future__ import annotations

import os


def not_forked_from(parent: int, worker_id: int) -> None:
    """Fail a worker forked from ``parent``, the process that decoded (it would carry its decoders' state)."""
    assert os.getppid() != parent, f"worker {worker_id} was forked from the process that decoded"
