"""What handing a job to another thread and collecting its result costs, through a
ThreadPoolExecutor and through handoff.SpinningWorker, with the owner busy in between
as a training step's serial part (clip, Adam) or a sampler's chunk bookkeeping keeps it.

    python benchmarks/handoff_cost.py [--gap-us 150] [--rounds 2000]

Each round: the owner spins for --gap-us without the GIL (time.sleep would let its core
idle, which is not what a busy owner does), submits a job that records when it starts,
and collects the result; prints the median microseconds from submit to the job's start
and from the job's end to the owner holding the result, for each kind, interleaved in
blocks of 100 rounds.
"""
import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.parallel.handoff import SpinningWorker  # noqa: E402


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gap-us", type=float, default=150.0)
    ap.add_argument("--rounds", type=int, default=2000)
    a = ap.parse_args()
    pool = ThreadPoolExecutor(1)
    worker = SpinningWorker("handoff-cost")
    kinds = {
        "ThreadPoolExecutor": lambda fn: pool.submit(fn).result(),
        "SpinningWorker": lambda fn: (worker.submit(fn), worker.result())[1],
    }
    seen = {name: ([], []) for name in kinds}
    for block in range(a.rounds // 100):
        for name, round_trip in kinds.items():
            for _ in range(100):
                busy(a.gap_us * 1e-6)
                t0 = time.perf_counter()
                started = round_trip(time.perf_counter)
                t1 = time.perf_counter()
                seen[name][0].append(started - t0)
                seen[name][1].append(t1 - started)
    worker.close()
    pool.shutdown()
    print(f"owner busy {a.gap_us:.0f} us between jobs; medians of {a.rounds} rounds")
    for name, (to_start, to_result) in seen.items():
        print(f"  {name:20s} submit -> start {1e6 * statistics.median(to_start):6.1f} us, "
              f"end -> result {1e6 * statistics.median(to_result):6.1f} us")


if __name__ == "__main__":
    main()
