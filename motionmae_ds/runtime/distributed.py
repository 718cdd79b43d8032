"""Process-group setup and small collectives; works under the deepspeed launcher or as plain python."""
from __future__ import annotations

import os
import socket

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.constants import default_pg_timeout
from deepspeed.utils import groups

from motionmae_ds.runtime.launcher_env import started_by_mpi


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Initialise the process group once.

    Without the launcher, RANK/WORLD_SIZE/... are absent and DeepSpeed would try MPI discovery; a
    single-process world is what ``python launch/pretrain.py`` means, so we say so explicitly.
    """
    if "RANK" not in os.environ and not started_by_mpi():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not dist.is_initialized():
        if get_accelerator().device_name() != "cpu":
            # NCCL's object collectives (gather_objects) and the collectives before deepspeed.initialize run on
            # the current device: each rank's own, not device 0 for all
            get_accelerator().set_device(local_rank())
        deepspeed.init_distributed(dist_init_required=True)
        _unlink_shm_workspace()
        _bound_data_parallel_group()


def _bound_data_parallel_group() -> None:
    """Give the group ZeRO's collectives run on the world group's timeout (``DEEPSPEED_TIMEOUT``).

    Without an mpu, DeepSpeed runs its gradient reduce-scatter and parameter all-gather on a clone of the
    world group made with ``new_group(ranks)``, and torch gives a new group its backend's default timeout
    (30 minutes for gloo), not the world group's: a frozen peer held the other ranks for half an hour instead
    of ``DEEPSPEED_TIMEOUT`` minutes. DeepSpeed caches the clone, so creating it here (every rank, right
    after init) with the timeout is what ``deepspeed.initialize`` later finds. The group is made with
    ``new_group(timeout=...)``, which every torch release has, rather than by setting the timeout of DeepSpeed's
    clone afterwards: ``torch.distributed.set_timeout`` is missing from the torch builds common CUDA images ship.
    """
    if dist.get_world_size() == 1:
        return
    if groups._WORLD_GROUP is None:
        groups._WORLD_GROUP = dist.new_group(ranks=list(range(dist.get_world_size())), timeout=default_pg_timeout)
    elif hasattr(dist, "set_timeout"):  # cloned before us (by a caller's own DeepSpeed use): bound it if torch can
        dist.set_timeout(default_pg_timeout, group=groups._WORLD_GROUP)


def _unlink_shm_workspace() -> None:
    """Remove the name of DeepSpeed's CPU shared-memory allreduce workspace once every rank has it mapped.

    DeepSpeed's CPU accelerator creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    (~66 MB) per rank and never unlinks it, so every run — and every killed run — leaves RAM behind in
    the tmpfs. The peers open each other's files during init, so after a barrier the names are no longer
    needed; the mappings stay valid until the processes exit.
    """
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    barrier()  # on every rank, whether or not it has a file: a conditional barrier could deadlock
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    acc = get_accelerator()
    if acc.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(acc.device_name(local_rank()))


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum across ranks (in place and returned); a no-op in a single-process world. A CPU tensor travels
    through the accelerator when the backend (NCCL) reduces device tensors only."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dev = device()
        if values.device.type == "cpu" and dev.type != "cpu" and dist.get_backend() == "nccl":
            moved = values.to(dev)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            values.copy_(moved.cpu())
        else:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(items: list) -> list:
    """Concatenation of every rank's ``items`` (picklable), in rank order, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(items)
    boxes = [None] * dist.get_world_size()
    dist.all_gather_object(boxes, list(items))
    return [item for box in boxes for item in box]


def enable_tf32(device: torch.device) -> bool:
    """TF32 tensor cores for the fp32 matmuls and convolutions left on CUDA (bf16 runs have few: the fp32
    target and loss math); the CPU has no such mode. Returns whether it was switched on."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True
