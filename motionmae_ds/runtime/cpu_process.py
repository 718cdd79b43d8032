"""Process settings for training on the CPU accelerator: torch threads per rank and glibc's allocator.

A training step frees and re-allocates the same large activation buffers every iteration. glibc serves
any block above its mmap threshold (a dynamic value that starts at 128 KiB and rises only to the largest
block freed so far, at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``; the
next step then faults every page in again, and with ``M_TRIM_THRESHOLD`` at its 128 KiB default the top
of the heap is given back as well. That page-fault work costs time in proportion to the bytes a step
allocates (bench/model_step.py shows it; docs/notes/model-step-speed.md has the numbers).
``keep_freed_memory`` raises both thresholds so freed activations stay in the heap and are reused; the
resident set then stays at the step's peak, which training reaches anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
from deepspeed.accelerator import get_accelerator

from motionmae_ds.runtime import distributed as dist_utils

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap; memory at the top of the heap is returned only past 1 GiB free.
KEEP_FREED_BYTES = 1 << 30
# Set to "0" to leave the allocator alone (the MALLOC_*_ environment variables also take precedence).
OPT_OUT_ENV = "MOTIONMAE_KEEP_FREED_MEMORY"
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(threshold: int = KEEP_FREED_BYTES) -> bool:
    """Ask glibc to keep freed blocks up to ``threshold`` bytes for reuse instead of unmapping them.
    Returns whether the setting took effect: False when opted out, when the user already tuned malloc
    through the environment, or when the C library is not glibc (no ``mallopt``)."""
    if os.environ.get(OPT_OUT_ENV, "1") == "0" or any(k in os.environ for k in _GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):  # glibc only
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))


def tune_cpu_process() -> None:
    """On the CPU accelerator: one share of the cores per local rank (ranks on one machine would each
    start a thread per core and thrash) unless OMP_NUM_THREADS is set, and `keep_freed_memory`."""
    if get_accelerator().device_name() != "cpu":
        return
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", dist_utils.world_size())))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    keep_freed_memory()
