"""Standard output that is written whole or fails in one line.

Python's own stdout loses text without a word when the file it goes to reaches a size
limit (``ulimit -f``): the system writes part of a chunk, and the buffered layer drops
the rest. On a full disk (or ``> /dev/full``) it raises an OSError from whatever
``print`` or ``click.echo`` was running, a traceback, and again at exit ("Exception
ignored in ... <stdout>") for what was still buffered.

``guard()`` puts in its place a stream over the same file descriptor whose writes loop
until every byte is out, and raise StandardOutputFailed (a UserError: the CLI's one
line) at the first that fails; everything after that is discarded, exit included. A
terminal that closed (an SSH session that dropped: EIO, before its SIGHUP arrives) is
such a failure too, not a traceback. A reader that went away (EPIPE, e.g. ``| head``)
raises BrokenPipeError as before, which click and ``sample`` end quietly.
"""
from __future__ import annotations

import errno
import io
import os
import sys

from charlstm.errors import UserError


class StandardOutputFailed(UserError):
    """Standard output could not be written (a full disk, a file size limit)."""


class _WholeWrites(io.RawIOBase):
    """File descriptor ``fd``, each write finished or failed: never partly done."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd
        self.failed = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.failed:
            return len(view)  # the failure was reported once; the rest has nowhere to go
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BrokenPipeError:
                self.failed = True
                raise
            except OSError as e:
                self.failed = True
                fix = ("the terminal it went to has closed" if e.errno == errno.EIO
                       else "send it where there is room")
                raise StandardOutputFailed(
                    f"cannot write standard output ({e.strerror or e}); what was printed is "
                    f"cut short: {fix}") from None
        return done


def guard() -> None:
    """Replace ``sys.stdout``, when it is a file or a pipe, by one whose writes are
    whole or raise StandardOutputFailed; text goes out as UTF-8, with the bytes a path
    was decoded from (surrogate escapes) as they were, and the buffering it had."""
    stream = sys.stdout
    if stream is None:
        return
    try:
        fd = stream.fileno()
        if stream.isatty() and os.name == "nt":
            return  # Windows writes its console its own way
    except (OSError, ValueError, io.UnsupportedOperation):
        return  # not a file (a test's capture): nothing to guard
    stream.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_WholeWrites(fd)), encoding="utf-8", errors="surrogateescape",
        line_buffering=stream.line_buffering, write_through=getattr(stream, "write_through", False))
