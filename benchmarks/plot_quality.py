"""Draw the curves of `charlstm bench --quality ... --json` (validation bpc against seconds),
one pair of curves per JSON file given (several seeds of one comparison, say).

    charlstm bench --quality 5m --same-init --corpus ../shared/data/tinyshakespeare.txt \\
        --json > docs/quality-5m-budget-zen5-seed0.json
    python benchmarks/plot_quality.py docs/quality-5m-budget-zen5-seed*.json docs/quality-5m-budget-zen5.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    *sources, dest = sys.argv[1:]
    runs = [json.load(open(src)) for src in sources]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for n, d in enumerate(runs):
        for colour, (key, label) in enumerate((("charlstm", "charlstm"), ("torch", "PyTorch 2 threads"))):
            seconds, bpc = zip(*d[key])
            seed = f", seed {d['seed']}" if len(runs) > 1 else ""
            ax.plot(seconds, bpc, marker="os^dv"[n % 5], ms=3, color=f"C{colour}",
                    alpha=1.0 if n == 0 else 0.6, label=label + seed)
    d = runs[0]
    init = ("same initial weights (PyTorch's)" if d.get("same_init")
            else "each tool's own initialisation")
    recipe = f", recipe '{d['recipe']}'" if "recipe" in d else ""
    ax.set_title(f"config {d['config']} on {d['corpus'].split('/')[-1]}{recipe}: {init}", fontsize=9)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation bits per character")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest)


if __name__ == "__main__":
    main()
