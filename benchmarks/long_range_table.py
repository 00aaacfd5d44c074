"""The tables of docs/LONG_RANGE.md, from the runs benchmarks/long_range.sh wrote.

    python benchmarks/long_range_table.py runs/long_range

Best validation bpc per cell and N (mean, spread and each seed), and the mean gradient
norm |dL_T/dh_t| (and |dL_T/dc_t|) at chosen distances: the geometric mean over the seeds
(the norms span orders of magnitude; an arithmetic mean would be one seed's value), and
the smallest and largest seed's value at distance 48.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DISTANCES = (0, 4, 16, 32, 48, 63)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/long_range")
    best = defaultdict(dict)
    flows = defaultdict(lambda: defaultdict(list))
    steps = set()
    for run in sorted(out.glob("*-N*-s*")):
        cell, n, seed = run.name.split("-")
        n, seed = int(n[1:]), int(seed[1:])
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        vals = [r["val_bpc"] for r in rows if "val_bpc" in r]
        best[(n, cell)][seed] = min(vals)
        steps.add(rows[-1]["step"])
        flow = json.loads((run / "gradflow.json").read_text())
        for name, values in flow["mean_norm"].items():
            flows[(n, cell)][name].append(values)
    print(f"steps per run: {sorted(steps)}\n")
    print("| N | cell | best val bpc, mean | sd | per seed |")
    print("|---|---|---|---|---|")
    for (n, cell), by_seed in sorted(best.items(), key=lambda kv: (kv[0][0], "rnn lstm gru".split().index(kv[0][1]))):
        values = [by_seed[s] for s in sorted(by_seed)]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {n} | {cell} | {statistics.mean(values):.3f} | {sd:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in values)} |")
    print()
    print("| N | cell | norm | " + " | ".join(f"d={d}" for d in DISTANCES) + " | d=48, seeds' range |")
    print("|---|---|---|" + "---|" * (len(DISTANCES) + 1))
    for (n, cell), names in sorted(flows.items(), key=lambda kv: (kv[0][0], "rnn lstm gru".split().index(kv[0][1]))):
        for name, curves in names.items():
            curves = np.array(curves)
            mean = np.exp(np.mean(np.log(curves), axis=0))
            label = "dL/dh" if name.startswith("h") else "dL/dc"
            print(f"| {n} | {cell} | {label} | " + " | ".join(f"{mean[d]:.2e}" for d in DISTANCES)
                  + f" | {curves[:, 48].min():.1e} - {curves[:, 48].max():.1e} |")


if __name__ == "__main__":
    main()
