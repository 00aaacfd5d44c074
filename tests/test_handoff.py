"""The worker thread that shards and two-core sampling hand jobs to (handoff.py), with
real threads, a real fork and the garbage collector."""
import gc
import os
import threading
import time

import numpy as np
import pytest

from charlstm.handoff import SpinningWorker


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
