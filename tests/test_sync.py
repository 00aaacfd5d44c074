"""The barrier two sampling cores meet at (kernels/sync.py), from real threads."""
import threading

import numpy as np

from charlstm.kernels.jit import kernel
from charlstm.kernels.sync import SLOT, barrier, load_acquire, store_release


@kernel
def _rounds(counts, rank, ranks, shared, rounds, seen):
    """Each round: rank r writes its slot of ``shared``, meets the others, then records
    the sum of every rank's slot; a rank that sees a stale slot records a wrong sum."""
    for n in range(1, rounds + 1):
        shared[rank] = n * (rank + 1)
        if not barrier(counts, rank, ranks, 2 * n - 1):
            return -1
        total = 0
        for r in range(ranks):
            total += shared[r]
        seen[rank, n - 1] = total
        if not barrier(counts, rank, ranks, 2 * n):  # nobody writes before all have read
            return -1
    return 0


@kernel
def _alone(counts, spin_limit):
    return barrier(counts, 0, 2, 1, spin_limit)


def test_two_threads_meet_at_every_barrier_and_see_each_others_writes():
    ranks, rounds = 2, 2000
    counts = np.zeros(ranks * SLOT, np.int64)
    shared = np.zeros(ranks, np.int64)
    seen = np.zeros((ranks, rounds), np.int64)
    _rounds(np.zeros(ranks * SLOT, np.int64), 0, 1, np.zeros(1, np.int64), 1,
            np.zeros((1, 1), np.int64))  # compile before the threads start
    results = [None] * ranks

    def run(rank):
        results[rank] = _rounds(counts, rank, ranks, shared, rounds, seen)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [0, 0]
    want = np.arange(1, rounds + 1) * 3  # n * 1 + n * 2
    np.testing.assert_array_equal(seen[0], want)
    np.testing.assert_array_equal(seen[1], want)
    assert [_read(counts, r * SLOT) for r in range(ranks)] == [2 * rounds] * ranks


@kernel
def _read(counts, index):
    return load_acquire(counts, index)


@kernel
def _write(counts, index, value):
    store_release(counts, index, value)


def test_a_rank_that_never_arrives_is_given_up_on():
    """A barrier whose other rank never comes returns False after its spins (the sampler
    then raises instead of hanging); once the other rank's count is there, True."""
    counts = np.zeros(2 * SLOT, np.int64)
    assert not _alone(counts, 10_000)
    assert counts[0] == 1  # it announced its own arrival
    _write(counts, SLOT, 1)
    assert _alone(counts, 10_000)
