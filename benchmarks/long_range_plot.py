"""The plots of docs/LONG_RANGE.md: for each N, |dL_T/dh_t| against distance for every
cell and seed (the LSTM's |dL_T/dc_t| dashed), from the runs benchmarks/long_range.sh wrote.

    python benchmarks/long_range_plot.py runs/long_range docs/long_range
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}


def main():
    runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    by_n = defaultdict(list)
    for run in sorted(runs.glob("*-N*-s*")):
        cell, n, seed = run.name.split("-")
        by_n[int(n[1:])].append((cell, int(seed[1:]), json.loads((run / "gradflow.json").read_text())))
    for n, entries in sorted(by_n.items()):
        fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
        labelled = set()
        for cell, seed, flow in entries:
            for name, values in flow["mean_norm"].items():
                kind = "h" if name.startswith("h") else "c"
                label = f"{cell} |dL/d{kind}|"
                ax.semilogy(flow["distance"], values, color=COLOURS[cell], lw=1.2,
                            ls="-" if kind == "h" else "--", alpha=0.85,
                            label=None if label in labelled else label)
                labelled.add(label)
        ax.axvline(n, color="grey", lw=0.8, ls=":")
        ax.set_title(f"builtin:recall:{n}: gradient norm against distance, every cell and seed",
                     fontsize=9)
        ax.set_xlabel("distance T - t")
        ax.set_ylabel("mean norm over 16 chunks")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(dest / f"flow-N{n}.png")
        plt.close(fig)


if __name__ == "__main__":
    main()
