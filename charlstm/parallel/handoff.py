"""A thread that takes one job at a time from the thread that owns it, staying awake
briefly between jobs so that a job handed over soon after the last one starts at once.

Training hands each step's second shard to another thread (shards.py) and two-core
sampling hands over every chunk of 32 characters (sample.py). Through a
ThreadPoolExecutor each hand-off woke a sleeping thread and woke the owner again for
the result: 19-21 us to start and 22-26 us to return on a 2-core AMD EPYC Zen 5 under
KVM, where a sleeping core wakes slowly (benchmarks/handoff_cost.py, owner busy 150 and
2,000 us between jobs). Here both sides first
spin in compiled code, without the GIL, on a counter (kernels/sync.py): the worker for
IDLE_SPINS after each job, the owner for as long while it waits for a result. Only
after that do they sleep on a condition, so a worker whose owner does something else
(validation, a save) stops spending its core within about a millisecond. While they
spin they offer the core to any other ready thread every few microseconds
(sync.wait_until_reached): with more threads than free cores, the thread waited for
may be waiting for this very core.

A job's exception is raised by ``result``; so is an exception a signal handler raises
while the owner waits (Ctrl-C), but only once the job has finished.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import weakref

import numpy as np

from charlstm.kernels.sync import SLOT, publish, publish_then_wait, wait_until_reached

# Spins (pause instructions) before a side sleeps: about 0.8 ms on an AMD EPYC Zen 5 (25
# ns a spin), longer where pause takes more cycles (Intel since Skylake: about 40 ns).
IDLE_SPINS = 1 << 15
POSTED, DONE = 0, SLOT  # the counters: jobs handed over, jobs finished (own cache lines)
POLL_SECONDS = 100e-6


class _Channel:
    """What the owner and the worker thread share; the thread holds only this, so a
    SpinningWorker nobody holds any more is collected and its thread told to stop.

    The worker sleeps on ``cond`` once it has spun IDLE_SPINS without a job, saying so
    in ``sleeping``; the owner, after publishing a job, notifies it only then. Both
    read and write ``sleeping`` and read the counters in Python, under the GIL, so a job
    published after the worker's last look is seen by the owner's look at ``sleeping``.
    An owner that spun as long for a result without it polls every POLL_SECONDS: the
    worker then reports without looking at the owner, which keeps it off the GIL."""

    def __init__(self, spins: int):
        self.counts = np.zeros(2 * SLOT, np.int64)
        self.spins = spins
        self.cond = threading.Condition()
        self.sleeping = False
        self.job = None  # (fn, args), or None: stop
        self.outcome = None  # (value, exception)
        self.serving = True  # false once serve() has returned, however

    def post(self, job, seq: int) -> None:
        self.job = job
        publish(self.counts, POSTED, seq)
        if self.sleeping:
            with self.cond:
                self.cond.notify_all()

    def serve(self) -> None:
        try:
            self._serve()
        finally:
            self.serving = False

    def _serve(self) -> None:
        # Whether job ``seq`` was seen while spinning: None before any spin for it, False
        # after a whole spin without it (then sleep at once instead of spinning again).
        seq, seen = 1, None
        while True:
            if seen is None:
                seen = wait_until_reached(self.counts, POSTED, seq, self.spins)
            if not seen:
                with self.cond:
                    self.sleeping = True
                    while self.counts[POSTED] < seq:
                        self.cond.wait()
                    self.sleeping = False
            if self.job is None:
                return
            fn, args = self.job
            try:
                self.outcome = (fn(*args), None)
            except BaseException as e:  # noqa: BLE001 -- handed back to the owner to raise
                self.outcome = (None, e)
            seen = publish_then_wait(self.counts, DONE, seq, POSTED, seq + 1, self.spins)
            seq += 1

    def collect(self, seq: int):
        try:
            if not wait_until_reached(self.counts, DONE, seq, self.spins):
                self._poll_done(seq)
        except BaseException:
            # A signal handler's exception (KeyboardInterrupt) while waiting: the job
            # still runs on the worker, so let it finish before the caller goes on to
            # touch what it writes. A second interrupt here gives up waiting.
            self._poll_done(seq)
            self.outcome = None
            raise
        value, error = self.outcome
        self.outcome = None
        if error is not None:
            raise error
        return value

    def _poll_done(self, seq: int) -> None:
        while self.counts[DONE] < seq:
            if not self.serving:
                raise RuntimeError("the worker thread stopped before finishing its job")
            time.sleep(POLL_SECONDS)


class SpinningWorker:
    """A thread that runs one ``fn(*args)`` at a time for its owner: ``submit``, then
    ``result`` (which returns the value or raises the job's exception) before the next
    ``submit``. After a fork, or a ``close``, the next ``submit`` starts a thread of its
    own. ``submit`` raises RuntimeError when no thread can start (the interpreter is
    shutting down) or a job is still uncollected."""

    def __init__(self, name: str, spins: int = IDLE_SPINS):
        self.name = name
        self.spins = spins
        self._start()

    def _start(self) -> None:
        if sys.is_finalizing():  # a thread started now would never run: Thread.start hangs
            raise RuntimeError("the interpreter is shutting down: no new threads")
        self._channel = _Channel(self.spins)
        self._seq = 0
        self._pending = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._channel.serve, name=self.name, daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _Channel.post, self._channel, None, 1 << 62)

    @property
    def pending(self) -> bool:
        """Whether a job was submitted and its result not yet collected (in this
        process: a forked child has no part in its parent's job)."""
        return self._pending and self._pid == os.getpid()

    def submit(self, fn, *args) -> None:
        if self._pid != os.getpid() or not self._finalizer.alive:
            # A forked child inherits this object but not the thread, nor the job its
            # parent had in hand; a closed worker has no thread either.
            self._finalizer.detach()
            self._start()
        if self._pending:
            raise RuntimeError("collect the last job's result before submitting another")
        self._seq += 1
        self._pending = True
        self._channel.post((fn, args), self._seq)

    def result(self):
        if not self.pending:
            raise RuntimeError("no job was submitted")
        self._pending = False
        return self._channel.collect(self._seq)

    def close(self) -> None:
        """Stop the thread (after the job in hand, if any, is collected)."""
        if self.pending:
            self.result()
        if self._pid == os.getpid():
            self._finalizer()
            self._thread.join(timeout=1.0)
