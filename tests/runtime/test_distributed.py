"""The process group on a torch without ``torch.distributed.set_timeout`` (torch 2.11, what common CUDA images ship):
two ranks start, and ZeRO's clone of the world group is the one made at init (with the run's collective timeout:
the frozen-peer test in tests/multinode/test_rank_failure.py measures it) and reduces; the timeout is given in
seconds (``MOTIONMAE_COLLECTIVE_TIMEOUT_S``) and bounds both groups; the local rank under MPI launchers."""
import multiprocessing
import os
import time
from datetime import timedelta

import pytest

from motionmae_ds.config import ConfigError
from motionmae_ds.runtime import distributed as dist_utils
from tests.helpers import free_port

CHILD_TIMEOUT_S = 120


TIMEOUT_S = 3  # MOTIONMAE_COLLECTIVE_TIMEOUT_S of the two ranks


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
                      MOTIONMAE_COLLECTIVE_TIMEOUT_S=str(TIMEOUT_S))
    try:
        import torch
        import torch.distributed as dist
        from deepspeed.utils import groups

        if hasattr(dist, "set_timeout"):
            del dist.set_timeout  # as on torch 2.11: any call of it would raise AttributeError
        from motionmae_ds.runtime import distributed as dist_utils

        dist_utils.init_distributed()
        zero_group = groups._clone_world_group()  # what ZeRO reduces on: the group made at init, not a new one
        made_at_init = zero_group is groups._WORLD_GROUP
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value, group=zero_group)
        dist.barrier()
        # rank 1 stays silent: rank 0's collectives on the world group and on ZeRO's give up after the timeout
        waited = []
        if rank == 0:
            from motionmae_ds.runtime.failure import is_peer_failure

            for group in (None, zero_group):
                t0 = time.monotonic()
                try:
                    dist.all_reduce(torch.ones(1), group=group)
                    waited.append(None)
                except Exception as exc:  # noqa: BLE001 (what the entry points map to exit code 5)
                    waited.append((round(time.monotonic() - t0, 1), is_peer_failure(exc)))
        else:
            time.sleep(3 * TIMEOUT_S)
        results.put((rank, made_at_init, value.item(), None, waited))
    except BaseException as exc:  # noqa: BLE001 (reported to the test, which fails with it)
        results.put((rank, False, None, f"{type(exc).__name__}: {exc}", []))
    results.close()
    results.join_thread()
    os._exit(0)  # no teardown of a group whose peer was left waiting


def test_two_ranks_start_without_set_timeout_and_time_out_in_seconds():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=_rank, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = sorted((results.get(timeout=CHILD_TIMEOUT_S) for _ in procs), key=lambda g: g[0])
    for p in procs:
        p.join(30)
    assert [g[3] for g in got] == [None, None], got
    assert [g[1] for g in got] == [True, True]
    assert [g[2] for g in got] == [3.0, 3.0]  # 1 + 2 summed over the ZeRO group
    # world group, then ZeRO's: each raised a peer failure after the 3 s, not DeepSpeed's 10 minutes
    waited = got[0][4]
    assert len(waited) == 2 and all(w is not None and w[1] for w in waited), waited
    assert all(TIMEOUT_S - 0.5 <= w[0] <= 3 * TIMEOUT_S for w in waited), waited


def test_collective_timeout_in_seconds_then_deepspeeds_minutes_then_30_minutes():
    assert dist_utils.collective_timeout({"MOTIONMAE_COLLECTIVE_TIMEOUT_S": "15"}) == timedelta(seconds=15)
    assert dist_utils.collective_timeout({"MOTIONMAE_COLLECTIVE_TIMEOUT_S": "2.5", "DEEPSPEED_TIMEOUT": "60"}
                                         ) == timedelta(seconds=2.5)
    assert dist_utils.collective_timeout({"DEEPSPEED_TIMEOUT": "60"}) == timedelta(minutes=60)
    assert dist_utils.collective_timeout({}) == timedelta(minutes=30)
    for bad in ("0", "-4", "ten"):
        with pytest.raises(ConfigError, match="MOTIONMAE_COLLECTIVE_TIMEOUT_S"):
            dist_utils.collective_timeout({"MOTIONMAE_COLLECTIVE_TIMEOUT_S": bad})


def test_local_rank_under_mpi_launchers_without_local_rank(monkeypatch):
    # deepspeed --launcher openmpi starts the ranks through mpirun: OMPI_* variables, no LOCAL_RANK before
    # DeepSpeed's discovery; the second rank of a node must not take device 0
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for var, value in (("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "3"),
                       ("OMPI_COMM_WORLD_LOCAL_RANK", "1")):
        monkeypatch.setenv(var, value)
    assert dist_utils.local_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_utils.local_rank() == 1
    assert dist_utils.local_rank({"MPI_LOCALRANKID": "2"}) == 2  # MPICH / Intel MPI
    assert dist_utils.local_rank({"SLURM_LOCALID": "3"}) == 3
    assert dist_utils.local_rank({}) == 0
