"""One process at a time per run directory.

Two charlstm processes writing one run (two `resume`s, or `train --force` over a run
still training) would interleave checkpoints and metrics lines. A run directory's
``.lock`` file is held with an advisory lock (``flock``) for as long as a process trains
in it; the lock goes with the process, however it ends, so a crash never leaves a run
locked. The file names the holder's process id for the message the next process gives.
"""
from __future__ import annotations

import os
from pathlib import Path

from charlstm.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """The lock on one run directory, held from ``acquire`` until ``release`` (or until
    the process ends)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.file = None

    def acquire(self) -> "RunLock":
        """Take the lock; raises UserError naming the process that holds it."""
        if fcntl is None:
            return self
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror or e}); make the run directory writable") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            holder = f"charlstm process {pid}" if pid.isdigit() else "another charlstm process"
            raise UserError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish, or stop "
                f"it, before starting another process on this run") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
        except OSError as e:  # a full disk: no block for the process id
            try:
                f.close()  # drops the lock
            except OSError:
                pass  # the same failed write again; the descriptor is closed regardless
            raise UserError(f"cannot write {self.path} ({e.strerror or e}); free space on its "
                            f"disk, then run the command again") from None
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor drops the flock
            self.file = None
