"""The process group on a torch without ``torch.distributed.set_timeout`` (torch 2.11, what common CUDA images ship):
two ranks start, and ZeRO's clone of the world group is the one made at init (with DeepSpeed's timeout: the
frozen-peer test in tests/multinode/test_rank_failure.py measures it) and reduces."""
import multiprocessing
import os

from tests.helpers import free_port

CHILD_TIMEOUT_S = 120


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    try:
        import torch
        import torch.distributed as dist
        from deepspeed.utils import groups

        del dist.set_timeout  # as on torch 2.11: any call of it would raise AttributeError
        from motionmae_ds.runtime import distributed as dist_utils

        dist_utils.init_distributed()
        zero_group = groups._clone_world_group()  # what ZeRO reduces on: the group made at init, not a new one
        made_at_init = zero_group is groups._WORLD_GROUP
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value, group=zero_group)
        results.put((rank, made_at_init, value.item(), None))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 (reported to the test, which fails with it)
        results.put((rank, False, None, f"{type(exc).__name__}: {exc}"))


def test_two_ranks_start_without_set_timeout():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=_rank, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=CHILD_TIMEOUT_S) for _ in procs)
    for p in procs:
        p.join(30)
    assert [g[3] for g in got] == [None, None], got
    assert [g[1] for g in got] == [True, True]
    assert [g[2] for g in got] == [3.0, 3.0]  # 1 + 2 summed over the ZeRO group
