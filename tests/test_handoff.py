"""The worker thread that shards and two-core sampling hand jobs to (handoff.py), with
real threads, a real fork and the garbage collector."""
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from charlstm.parallel.handoff import SpinningWorker


def test_jobs_run_in_order_on_another_thread_and_return_their_values():
    worker = SpinningWorker("test-worker")
    seen = []

    def job(i):
        seen.append((i, threading.current_thread().name))
        return i * i

    try:
        for i in range(2000):  # back to back: the worker is still spinning for most
            worker.submit(job, i)
            assert worker.result() == i * i
    finally:
        worker.close()
    assert [i for i, _ in seen] == list(range(2000))
    assert {name for _, name in seen} == {"test-worker"}


def test_a_sleeping_worker_wakes_for_the_next_job_and_the_owner_for_its_result():
    worker = SpinningWorker("test-sleeper", spins=10)  # both sides sleep almost at once
    try:
        for i in range(20):
            time.sleep(0.002)  # the worker has given up spinning and sleeps
            worker.submit(lambda x: (time.sleep(0.002), x)[1], i)  # the owner sleeps too
            assert worker.result() == i
    finally:
        worker.close()


def test_an_exception_in_a_job_is_raised_by_result_and_the_worker_goes_on():
    worker = SpinningWorker("test-errors")
    try:
        worker.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            worker.result()
        worker.submit(lambda: "next")
        assert worker.result() == "next"
    finally:
        worker.close()


def test_misuse_is_refused():
    worker = SpinningWorker("test-misuse")
    try:
        with pytest.raises(RuntimeError, match="no job"):
            worker.result()
        worker.submit(time.sleep, 0.01)
        with pytest.raises(RuntimeError, match="collect"):
            worker.submit(time.sleep, 0.01)
    finally:
        worker.close()  # collects the job in hand first


def test_close_and_garbage_collection_stop_the_thread():
    worker = SpinningWorker("test-close")
    worker.submit(int, 3)
    worker.result()
    thread = worker._thread
    worker.close()
    assert not thread.is_alive()

    dropped = SpinningWorker("test-dropped")
    dropped.submit(int, 4)
    dropped.result()
    thread = dropped._thread
    del dropped
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_forked_child_gets_a_thread_of_its_own():
    worker = SpinningWorker("test-fork")
    worker.submit(os.getpid)
    parent = worker.result()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the worker has no thread until it is used
        try:
            worker.submit(os.getpid)
            ok = worker.result() == os.getpid() != parent
            worker.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        worker.submit(os.getpid)  # the parent's worker is untouched
        assert worker.result() == parent
    finally:
        worker.close()


def test_results_written_by_the_worker_are_seen_by_the_owner():
    """The owner reads what the job wrote, not a stale copy: the release store of the
    job's completion orders the job's writes before it (kernels/sync.py)."""
    worker = SpinningWorker("test-visibility")
    data = np.zeros(4096)
    try:
        for i in range(1, 500):
            worker.submit(data.fill, float(i))
            worker.result()
            assert data[0] == data[-1] == i
    finally:
        worker.close()


def test_a_child_forked_while_a_job_is_in_hand_has_no_part_in_it():
    worker = SpinningWorker("test-fork-pending")
    worker.submit(time.sleep, 0.3)  # the parent's job, still running at the fork
    pid = os.fork()
    if pid == 0:
        try:
            ok = not worker.pending
            worker.submit(os.getpid)
            ok = ok and worker.result() == os.getpid()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert worker.pending
        worker.result()
    finally:
        worker.close()


class _Interrupt(Exception):
    pass


def test_an_interrupt_while_waiting_for_a_result_comes_out_after_the_job_ends():
    """A signal handler's exception (Ctrl-C's KeyboardInterrupt) raised while the owner
    waits is raised only once the job has finished: nothing it writes changes after."""
    worker = SpinningWorker("test-interrupt")
    finished = []

    def job():
        time.sleep(0.3)
        finished.append(time.perf_counter())

    def interrupt(signum, frame):
        raise _Interrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        worker.submit(job)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_Interrupt):
            worker.result()
        assert finished  # the job had ended when the interrupt came out
        worker.submit(int, 5)  # and the worker takes the next one
        assert worker.result() == 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        worker.close()


_AT_SHUTDOWN = """
import sys
from charlstm.parallel.handoff import SpinningWorker

worker = SpinningWorker("late")
worker.submit(int, 1)
worker.result()

class Late:
    def __del__(self):
        try:
            worker.submit(int, 2)  # its thread was stopped at exit: none can start now
            print("submitted", worker.result())
        except RuntimeError as e:
            print("refused:", e)

late = Late()
late.cycle = late  # collected only as the interpreter shuts down
"""


def test_a_worker_used_while_the_interpreter_shuts_down_refuses_instead_of_hanging():
    proc = subprocess.run([sys.executable, "-c", _AT_SHUTDOWN], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "refused: the interpreter is shutting down" in proc.stdout, proc.stdout
