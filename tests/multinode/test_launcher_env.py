"""Launcher detection from the environment variables each runtime sets."""
from motionmae_ds.runtime.launcher_env import started_by_mpi


def test_mpi_worlds_are_recognised():
    assert started_by_mpi({"OMPI_COMM_WORLD_SIZE": "32", "OMPI_COMM_WORLD_RANK": "5"})
    assert started_by_mpi({"PMI_SIZE": "16"}) and started_by_mpi({"MV2_COMM_WORLD_SIZE": "2"})
    # a singleton MPI world or a plain shell is a one-process run
    assert not started_by_mpi({"OMPI_COMM_WORLD_SIZE": "1"}) and not started_by_mpi({})
    assert not started_by_mpi({"PMI_SIZE": "x"})
