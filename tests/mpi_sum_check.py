"""Run under mpiexec by tests/test_mpi.py: ranks.MpiRanks.ordered_sum against the sum of
every rank's array added in rank order, for several lengths and both float widths.
Every rank draws every rank's array from the same seeds, so each can compute the
rank-order sum itself. Exits 1 on the first difference."""
import sys

import numpy as np

from charlstm.parallel.ranks import MpiRanks

ranks = MpiRanks()
for dtype in (np.float32, np.float64):
    for length in (1, 2, 3, 7, 1000, 4099):
        arrays = [np.random.default_rng([length, r]).standard_normal(length).astype(dtype) * 1e3
                  for r in range(ranks.size)]
        expected = arrays[0].copy()
        for a in arrays[1:]:
            expected += a
        mine = arrays[ranks.rank].copy()
        ranks.ordered_sum(mine)
        if not np.array_equal(mine, expected):
            print(f"rank {ranks.rank}: differs at length {length}, {np.dtype(dtype).name}", flush=True)
            sys.exit(1)
print(f"rank {ranks.rank} of {ranks.size}: equal", flush=True)
