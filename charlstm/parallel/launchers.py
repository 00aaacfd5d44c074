"""The MPI launchers (mpiexec, srun, ...) that may have started this process, told by
the variables they set in every process they start. Light on purpose: the commands that
must run once (sweep, bench) and a sweep's trials read it without NumPy or the kernels.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from charlstm.errors import AnotherRankFailed, UserError

# What launchers set in every process they start: (job size, this process's rank, the
# command). Slurm's SLURM_NTASKS is set in a batch script too, which runs once: only
# srun's job steps set SLURM_STEP_NUM_TASKS.
LAUNCHER_VARIABLES = (
    ("PMI_SIZE", "PMI_RANK", "mpiexec"),  # MPICH's Hydra, Intel MPI, MVAPICH
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "mpiexec"),  # Open MPI
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "mpirun_rsh"),  # MVAPICH's own launcher
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),  # a Slurm job step
)


# The variables above, which a process started by one of its ranks (a sweep's trial, in a
# Dask worker that a launcher started) must not inherit: it is no rank of that job.
LAUNCHER_NAMES = frozenset(name for size, rank, _ in LAUNCHER_VARIABLES for name in (size, rank))


class Launch(NamedTuple):
    size: int  # processes the launcher started
    rank: int  # this one's place among them
    command: str  # the launcher, as the user typed it


def launched_by(environ=None) -> Launch | None:
    """The launcher (mpiexec, srun, ...) that started this process, from the variables it
    set (LAUNCHER_VARIABLES), or None for a process started on its own."""
    environ = os.environ if environ is None else environ
    for size_name, rank_name, command in LAUNCHER_VARIABLES:
        try:
            size, rank = int(environ[size_name]), int(environ.get(rank_name, "0"))
        except (KeyError, ValueError):
            continue
        return Launch(size, rank, command)
    return None


def refuse_launched_copies(what: str, environ=None) -> None:
    """For a command that must run once (a sweep): refuse a process that a launcher
    started among several, each of which would do ``what`` alone. Raises UserError on
    the first of them and AnotherRankFailed (exit without a word) on the others."""
    launch = launched_by(environ)
    if launch is None or launch.size <= 1:
        return
    if launch.rank != 0:
        raise AnotherRankFailed(1)
    raise UserError(f"this is one of {launch.size} processes that {launch.command} started, "
                    f"and each would {what}: start it once, without {launch.command}")
