"""The speedup model of docs/SCALING.md, from measured step times.

    python benchmarks/scaling_model.py ONE_RANK.json [--latency-us 10]

ONE_RANK.json is `mpiexec -n 1 python benchmarks/gradient_exchange.py --json ONE_RANK.json`
on one core: t1, the time of one training step of the whole batch on one core, and the
gradient's bytes S. With R machines (one such core each), a step computes 1/R of the
batch, t1 / R if the rows split perfectly, and exchanges the gradient: the rank-order sum
sends (R-1)/R of S out of each rank and receives as much, twice (Alltoallv, then
Allgatherv), in 2(R-1) messages. So with bandwidth W bytes/s each way and a latency of a
per message, t(R) = t1 / R + 2 (R-1)/R * S / W + 2 (R-1) a, and the speedup is t1 / t(R).
The model leaves out what makes real runs slower (small per-rank batches use the cores
less well, the network is shared) and what makes them faster (nothing: the exchange
does not overlap the compute), so it is an upper bound.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NETWORKS_GBIT = (10, 25, 100)
MACHINES = (2, 4, 8, 16, 32, 64)


def step_seconds(t1: float, grad_bytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """The modelled time of one step over ``ranks`` machines (see the module's text)."""
    if ranks == 1:
        return t1
    return t1 / ranks + 2 * (ranks - 1) / ranks * grad_bytes / bandwidth + 2 * (ranks - 1) * latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("one_rank", type=Path)
    parser.add_argument("--latency-us", type=float, default=10.0)
    a = parser.parse_args()
    data = json.loads(a.one_rank.read_text())
    latency = a.latency_us * 1e-6
    for r in data["results"]:
        t1, size = r["step_seconds"], r["gradient_bytes"]
        print(f"\n{r['config']}: t1 {t1 * 1e3:.1f} ms per step on one core, gradient {size / 1e6:.2f} MB")
        print("| machines | " + " | ".join(f"{g} Gb/s" for g in NETWORKS_GBIT) + " |")
        print("|---|" + "---|" * len(NETWORKS_GBIT))
        for ranks in MACHINES:
            cells = [t1 / step_seconds(t1, size, ranks, g * 1e9 / 8, latency) for g in NETWORKS_GBIT]
            print(f"| {ranks} | " + " | ".join(f"{c:.1f}x" for c in cells) + " |")


if __name__ == "__main__":
    main()
