"""Why split the batch rather than each product: one LSTM layer's forward and backward
recurrence over 32 streams in one call, against two calls of 16 streams at once from two
Python threads (GIL-free compiled code).

    python benchmarks/shard_probe.py                          # BLAS on both cores
    OPENBLAS_NUM_THREADS=1 python benchmarks/shard_probe.py   # one BLAS thread per caller
    python benchmarks/shard_probe.py --hidden 256             # M's layer size

T=64, as configs S and M.
"""
import argparse
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import median_time  # noqa: E402
from overlap_probe import recurrence, recurrence_arguments  # noqa: E402

T = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    whole = recurrence_arguments(a.batch, a.hidden, T, rng)
    half = [recurrence_arguments(a.batch // 2, a.hidden, T, rng) for _ in range(2)]
    recurrence(*whole)  # compile
    recurrence(*half[0])

    def two_at_once():
        other = threading.Thread(target=recurrence, args=half[1])
        other.start()
        recurrence(*half[0])
        other.join()

    t_whole = median_time(lambda: recurrence(*whole), 15) * 1e3
    t_half = median_time(lambda: recurrence(*half[0]), 15) * 1e3
    t_both = median_time(two_at_once, 15) * 1e3
    print(f"H={a.hidden}: {a.batch} streams in one call {t_whole:.2f} ms; {a.batch // 2} streams "
          f"{t_half:.2f} ms; two calls of {a.batch // 2} at once {t_both:.2f} ms")


if __name__ == "__main__":
    main()
