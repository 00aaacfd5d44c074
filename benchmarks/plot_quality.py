"""Draw the curves of `charlstm bench --quality ... --json` (validation bpc against seconds).

    charlstm bench --quality 5m --same-init --corpus ../shared/data/tinyshakespeare.txt \\
        --json > docs/quality-5m-same-init.json
    python benchmarks/plot_quality.py docs/quality-5m-same-init.json docs/quality-5m-same-init.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dest = sys.argv[1], sys.argv[2]
    d = json.load(open(src))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, label in (("charlstm", "charlstm"), ("torch", "PyTorch 2 threads")):
        seconds, bpc = zip(*d[key])
        ax.plot(seconds, bpc, marker="o", ms=3, label=label)
    init = "same initial weights (PyTorch's, seed %d)" % d["seed"] if d.get("same_init") else "each tool's own initialisation"
    ax.set_title(f"config {d['config']} on {d['corpus'].split('/')[-1]}: {init}", fontsize=9)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)


if __name__ == "__main__":
    main()
