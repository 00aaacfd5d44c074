"""Standard error, and the signals that end a command, as every charlstm command sees them.

Training never depends on being able to print: a run started with its output closed
(``>&-``, a daemon, pythonw), whose reader went away (``| head``: EPIPE) or whose
terminal closed (writes raise EIO after the hangup) trains to its budget and saves.
What cannot be printed is dropped; the exit status says how the command ended.

SIGTERM and SIGHUP end any command as Ctrl-C does (an ``Interrupted``, a
KeyboardInterrupt that knows its signal): what it wrote stays consistent, it exits with
128 + the signal's number and prints no traceback. Training installs its own handlers
(train._StopSignals), which finish the step and save.
"""
from __future__ import annotations

import io
import os
import signal
import sys

# The signals that ask a command to stop: Ctrl-C, `kill`, a closed terminal or SSH session.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived outside training: unwinds the command like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the number of the signal behind ``interrupt`` (SIGINT for a plain Ctrl-C)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise Interrupted, as SIGINT raises KeyboardInterrupt, so a
    command unwinds (its temporary files removed) instead of dying where it stands."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_interrupted)


class SafeStderr(io.TextIOBase):
    """Standard error that never fails a write: the first write or flush that fails
    (closed, EPIPE, EIO) points file descriptor 2 at the null device and drops the rest,
    so neither this stream's buffer nor a library writing to the descriptor fails later."""

    def __init__(self, stream):
        super().__init__()
        self._stream = stream

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self):
        return getattr(self._stream, "errors", None) or "backslashreplace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self._stream is None:
            raise io.UnsupportedOperation("standard error is closed")
        return self._stream.fileno()

    def _lost(self) -> None:
        stream, self._stream = self._stream, None
        try:
            _point_at_null(stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream (click tells the two kinds apart so)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._stream is not None:
            try:
                self._stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._lost()
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._lost()


def _point_at_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        if null != fd:
            os.dup2(null, fd)
    finally:
        if null != fd:
            os.close(null)


def guard_standard_streams() -> None:
    """Point standard output and error, where they were closed at start-up, at the null
    device (so no file this process opens takes their descriptor and receives what a
    library prints), and wrap sys.stderr in SafeStderr. sys.stdout stays None when it
    was closed: commands that print their result refuse to run without it."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _point_at_null(fd)
    if not isinstance(sys.stderr, SafeStderr):
        sys.stderr = SafeStderr(sys.stderr)
