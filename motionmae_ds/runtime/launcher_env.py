"""Which launcher started this process, from its environment.

``distributed.init_distributed`` fills in a one-process world when RANK is absent (plain ``python``).
Under ``deepspeed --launcher openmpi`` (or mpich/impi/mvapich) RANK is absent too, but the MPI runtime set
its own variables and DeepSpeed's MPI discovery (needs ``mpi4py``) turns them into RANK/WORLD_SIZE/
MASTER_ADDR; filling in a one-process world there would start N independent runs in one directory.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

# world-size variables set by OpenMPI, MPICH/Intel MPI (PMI), PMIx and MVAPICH2
MPI_WORLD_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


def started_by_mpi(environ: Mapping[str, str] = os.environ) -> bool:
    """True when an MPI runtime started this process as one of several ranks."""
    for var in MPI_WORLD_VARS:
        value = environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False
