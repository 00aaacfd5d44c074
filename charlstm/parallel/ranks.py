"""One training run over several processes: the ranks of an MPI job (``--distributed mpi``,
the optional extra ``charlstm[mpi]``), or the one process of an ordinary run.

The global batch's B streams are split over the ranks in contiguous rows, as
shards.shard_bounds splits them over threads, and within a rank over its --threads
shards as always. Every rank holds the whole model and optimizer; after each backward
pass the ranks' gradients are summed **in rank order**, so every rank applies the same
update and the parameters never need to be sent. MPI_Allreduce is not used for this sum:
its summation order depends on the MPI library and the algorithm it picks, and float32
addition is not associative. Instead (``ordered_sum``) each rank receives its slice of
every rank's gradient (MPI_Alltoallv), adds the pieces in rank order, and the sums are
gathered back to all (MPI_Allgatherv). With one shard per rank, ``mpiexec -n 2 ...
--threads 1`` thus adds the same numbers in the same order as one process with
``--threads 2``, and the two runs are bit-identical.

Rank 0 decides what depends on a clock (the --time budget, validation), validates,
writes every file and prints; the other ranks follow its decisions, sent once a step.
``SingleProcess`` has the same interface for an ordinary run, so the training loop has
one code path.
"""
from __future__ import annotations

import numpy as np

from charlstm.errors import AnotherRankFailed, UsageProblem, UserError
from charlstm.parallel.launchers import launched_by
from charlstm.model.shards import shard_bounds

MPI_HINT = "--distributed mpi needs mpi4py and an MPI: pip install 'charlstm[mpi]'"

def ranks_for(distributed: str, environ=None):
    """The ranks of this run for ``--distributed`` (none or mpi), checked against how the
    process was started, before anything touches the run directory. Raises UserError for
    a process that a launcher started among several without --distributed mpi (each
    would train alone, in the same directory) on rank 0, AnotherRankFailed on the
    others (rank 0 speaks for the job); and for --distributed mpi in a process started
    alone, or in an MPI job that sees another size than its launcher started (mpi4py
    built for another MPI)."""
    launch = launched_by(environ)
    if distributed != "mpi":
        if launch is not None and launch.size > 1:
            if launch.rank != 0:
                raise AnotherRankFailed(1)
            raise UserError(f"this is one of {launch.size} processes that {launch.command} started, "
                            f"and without --distributed mpi each would train alone: add "
                            f"--distributed mpi, or start one process without {launch.command}")
        return SingleProcess()
    if launch is None:
        raise UserError("--distributed mpi trains over the processes an MPI launcher starts, and "
                        "this one was started alone: run `mpiexec -n N charlstm ... --distributed "
                        "mpi`, or drop --distributed mpi")
    ranks = MpiRanks()
    if ranks.size != launch.size:
        raise UserError(f"{launch.command} started {launch.size} processes but MPI sees "
                        f"{ranks.size}: mpi4py is built for another MPI than this "
                        f"{launch.command}'s; use the mpiexec of the MPI mpi4py was built with")
    return ranks


class SingleProcess:
    """An ordinary run: one rank, every collective a no-op."""

    rank, size = 0, 1
    is_root = True

    def rows(self, batch: int) -> tuple[int, int]:
        return 0, batch

    def ordered_sum(self, flat: np.ndarray) -> None:
        pass

    def sum_in_order(self, value: float) -> float:
        return value

    def bcast(self, value):
        return value

    def most(self, value: int) -> int:
        return value

    def gather_rows(self, state: dict) -> dict:
        return state

    def barrier(self) -> None:
        pass

    def agree(self, error: UserError | None, payload=None):
        if error is not None:
            raise error
        return payload

    def abort_for(self, error: UserError, echo) -> None:
        """One process: the error ends it the ordinary way (nothing to do here)."""


class MpiRanks:
    """This process's place in an MPI job (mpi4py's COMM_WORLD)."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise UserError(MPI_HINT) from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0

    def local_size(self) -> int:
        """Ranks of this job on this machine (sharing its cores)."""
        return self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()

    def rows(self, batch: int) -> tuple[int, int]:
        """This rank's contiguous streams of a batch of ``batch``. Raises UserError when
        there are more ranks than streams."""
        if batch < self.size:
            raise UserError(f"--batch-size {batch} has fewer streams than the {self.size} ranks; "
                            f"raise --batch-size or start fewer ranks")
        return shard_bounds(batch, self.size)[self.rank]

    def _type(self, array: np.ndarray):
        return {np.dtype(np.float32): self.MPI.FLOAT, np.dtype(np.float64): self.MPI.DOUBLE}[array.dtype]

    def ordered_sum(self, flat: np.ndarray) -> None:
        """Replace ``flat`` (the same length on every rank) by the sum over ranks, added
        in rank order ((g0 + g1) + g2) + ...: rank j receives slice j of every rank's
        array, adds them in that order, and the summed slices are gathered to all."""
        R = self.size
        bounds = shard_bounds(flat.size, R)
        counts = [hi - lo for lo, hi in bounds]
        displs = [lo for lo, _ in bounds]
        mine = counts[self.rank]
        received = np.empty(R * mine, flat.dtype)
        kind = self._type(flat)
        self.comm.Alltoallv([flat, (counts, displs), kind],
                            [received, ([mine] * R, [mine * r for r in range(R)]), kind])
        total = received[:mine].copy()
        for r in range(1, R):
            total += received[r * mine:(r + 1) * mine]
        self.comm.Allgatherv([total, kind], [flat, (counts, displs), kind])

    def sum_in_order(self, value: float) -> float:
        """The sum over ranks of a Python float, in rank order, on every rank."""
        total = 0.0
        for v in self.comm.allgather(value):
            total += v
        return total

    def bcast(self, value):
        """Rank 0's ``value`` on every rank."""
        return self.comm.bcast(value, root=0)

    def most(self, value: int) -> int:
        """The largest ``value`` over ranks (exact for integers), on every rank."""
        return self.comm.allreduce(value, op=self.MPI.MAX)

    def gather_rows(self, state: dict) -> dict | None:
        """The carried state of the whole batch on rank 0 (each rank's [L, rows, H]
        joined in rank order along the batch axis), None on the others."""
        pieces = self.comm.gather(state, root=0)
        if not self.is_root:
            return None
        return {key: np.concatenate([p[key] for p in pieces], axis=1) for key in state}

    def barrier(self) -> None:
        self.comm.Barrier()

    def agree(self, error: UserError | None, payload=None):
        """A point every rank reaches, with the UserError it met since the last one (or
        None): if any rank met one, rank 0 raises it (its own first; another rank's
        named by rank) and the other ranks raise AnotherRankFailed, so the job prints
        one error and every rank exits with its status. Otherwise rank 0's ``payload``
        is returned on every rank."""
        met = self.comm.allgather(None if error is None else
                                  (str(error), 2 if isinstance(error, UsageProblem) else 1))
        failed = [(r, m) for r, m in enumerate(met) if m is not None]
        if failed:
            rank, (message, code) = failed[0]
            if not self.is_root:
                raise AnotherRankFailed(code)
            if error is None:
                error = (UsageProblem if code == 2 else UserError)(f"(rank {rank}) {message}")
            error.agreed = True  # every rank knows: the job can end normally
            raise error
        return self.bcast(payload)

    def abort_for(self, error: UserError, echo) -> None:
        """A user error on this rank that the ranks did not reach together (``agree``
        marks those it raised): the others may be waiting in a collective, so print it
        once, rank-prefixed except on rank 0, through ``echo``, and end the whole job with
        the status the command line gives it (2 for a usage problem, else 1)."""
        if getattr(error, "agreed", False):
            return
        prefix = "" if self.is_root else f"(rank {self.rank}) "
        echo(f"Error: {prefix}{error}")
        self.comm.Abort(2 if isinstance(error, UsageProblem) else 1)
