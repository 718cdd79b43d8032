"""Process-group setup and small collectives; works under the deepspeed launcher or as plain python."""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import Optional

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import groups

from motionmae_ds.config import ConfigError
from motionmae_ds.runtime.launcher_env import started_by_mpi

# the collectives' timeout in seconds (README: "Exit codes"); DEEPSPEED_TIMEOUT (minutes) is read when ours is unset
COLLECTIVE_TIMEOUT_ENV = "MOTIONMAE_COLLECTIVE_TIMEOUT_S"
# 30 minutes: at the start of a large ZeRO-3 run every rank waits in one collective while the weights are
# partitioned and the first all-gathers run, and a resume reads a ViT-H checkpoint before its first barrier; a
# frozen rank is then noticed 30 minutes late, which a long run can afford, while a false timeout kills it
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0
# what a local rank is called by the launchers that do not set LOCAL_RANK themselves: OpenMPI, MPICH/Intel MPI,
# MVAPICH2, Slurm's srun
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                   "SLURM_LOCALID")
# NCCL's watchdog: 2 ("CleanUpOnly") aborts the communicators of a failed or timed-out collective and leaves the
# process alive, so the rank's next collective raises DistBackendError and runtime/failure.py turns it into exit
# code 5 with one line; torch's default (3, "SkipCleanUp") takes the process down with SIGABRT from the watchdog
# thread, before Python can say anything. Blocking wait is left off: it would make the host wait for every
# collective and undo ZeRO's overlap of communication with the backward pass.
NCCL_ENV_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


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
        timeout = collective_timeout()
        accelerated = get_accelerator().device_name() != "cpu"
        if accelerated:
            for key, value in NCCL_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_init_required=True, timeout=timeout)
        if accelerated:
            # after DeepSpeed's discovery (MPI launchers: it sets LOCAL_RANK) and before the first collective:
            # NCCL's communicators, object collectives (gather_objects) and the barriers run on the current
            # device, each rank's own, not device 0 for all
            get_accelerator().set_device(local_rank())
        _unlink_shm_workspace()
        _bound_data_parallel_group(timeout)


def collective_timeout(environ: Mapping[str, str] = os.environ) -> timedelta:
    """How long a collective waits for a silent peer before it raises (then exit code 5): ``MOTIONMAE_COLLECTIVE_
    TIMEOUT_S`` seconds, else DeepSpeed's ``DEEPSPEED_TIMEOUT`` minutes, else 30 minutes."""
    raw = environ.get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
        return timedelta(seconds=seconds)
    if environ.get("DEEPSPEED_TIMEOUT", "").strip():
        return timedelta(minutes=float(environ["DEEPSPEED_TIMEOUT"]))
    return timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S)


def _bound_data_parallel_group(timeout: timedelta) -> None:
    """Give the group ZeRO's collectives run on the world group's timeout (``collective_timeout``).

    Without an mpu, DeepSpeed runs its gradient reduce-scatter and parameter all-gather on a clone of the
    world group made with ``new_group(ranks)``, and torch gives a new group its backend's default timeout
    (30 minutes for gloo), not the world group's: a frozen peer held the other ranks for half an hour instead
    of the run's timeout. DeepSpeed caches the clone, so creating it here (every rank, right
    after init) with the timeout is what ``deepspeed.initialize`` later finds. The group is made with
    ``new_group(timeout=...)``, which every torch release has, rather than by setting the timeout of DeepSpeed's
    clone afterwards: ``torch.distributed.set_timeout`` is missing from the torch builds common CUDA images ship.
    """
    if dist.get_world_size() == 1:
        return
    if groups._WORLD_GROUP is None:
        groups._WORLD_GROUP = dist.new_group(ranks=list(range(dist.get_world_size())), timeout=timeout)
    elif hasattr(dist, "set_timeout"):  # cloned before us (by a caller's own DeepSpeed use): bound it if torch can
        dist.set_timeout(timeout, group=groups._WORLD_GROUP)


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


def local_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's index among the ranks of its node: ``LOCAL_RANK`` (the deepspeed and torchrun launchers,
    and DeepSpeed's MPI discovery), else what an MPI runtime or srun set (``deepspeed --launcher openmpi`` starts
    the ranks through mpirun, which sets no LOCAL_RANK), else 0."""
    for var in LOCAL_RANK_VARS:
        value = environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


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


def inference_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of evaluation, feature extraction and VOS on ``device``: bf16 on an accelerator (as the
    model trained), None on the CPU, whose fp32 numbers the CPU tests and benchmarks were measured with."""
    return None if device.type == "cpu" else torch.bfloat16


def inference_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``inference_dtype(device)`` with TF32 for what stays fp32 (CUDA); a no-op on the CPU."""
    dtype = inference_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    enable_tf32(device)
    return torch.autocast(device.type, dtype=dtype)
