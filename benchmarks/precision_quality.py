"""Does bfloat16 learn as float32 does? Equal steps, same initial weights, same data order.

For each seed, config M (lstm 2x256, batch 32x64) trains ``--steps`` steps from PyTorch's
initial weights of that seed, validating every ``--eval-steps`` steps (the whole
validation text, float32, as `charlstm train` validates):

- charlstm float32 and charlstm bfloat16 (mixed.py);
- with ``--torch``, PyTorch 2.13 float32 and PyTorch under torch.autocast("cpu",
  dtype=torch.bfloat16), the same loop (bench_torch.TorchTwin).

Equal steps make the comparison independent of the machine's speed and load. Each run is
a `python -m charlstm.tools.bench` worker process of its own. Results are appended to a JSON
file (one object per run) so an interrupted study resumes where it stopped:

    python benchmarks/precision_quality.py --corpus ../shared/data/tinyshakespeare.txt \
        --seeds 0 1 2 3 --torch --out docs/quality/precision-tinyshakespeare.json
    python benchmarks/precision_quality.py --corpus ../shared/data/anna-karenina.txt \
        --seeds 0 1 2 3 --out docs/quality/precision-anna-karenina.json
    python benchmarks/precision_quality.py --summary docs/quality/precision-*.json \
        --plot docs/quality/precision.png
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = (("charlstm", "float32"), ("charlstm", "bfloat16"))
TORCH_RUNS = (("torch", "float32"), ("torch", "bfloat16"))


def run_one(tool, precision, seed, corpus, steps, eval_steps, threads) -> dict:
    worker = "steps-charlstm" if tool == "charlstm" else "steps-torch"
    args = [sys.executable, "-m", "charlstm.tools.bench", "--worker", worker, "--config", "M",
            "--corpus", corpus, "--seed", str(seed), "--precision", precision,
            "--train-steps", str(steps), "--eval-steps", str(eval_steps),
            "--threads", str(threads)]
    if tool == "charlstm":
        args.append("--torch-init")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    curve = json.loads(proc.stdout.strip().splitlines()[-1])["curve"]
    return {"tool": tool, "precision": precision, "seed": seed, "corpus": Path(corpus).name,
            "steps": steps, "curve": curve, "wall_s": time.perf_counter() - t0}


def summary(paths) -> None:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line]
    for corpus in sorted({r["corpus"] for r in rows}):
        print(f"## {corpus}")
        final = {}
        for r in rows:
            if r["corpus"] == corpus:
                final.setdefault((r["tool"], r["precision"]), {})[r["seed"]] = r["curve"][-1][1]
        seeds = sorted({s for v in final.values() for s in v})
        print("| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
        print("|---|" + "---|" * (len(seeds) + 1))
        for key, by_seed in sorted(final.items()):
            values = [by_seed.get(s) for s in seeds]
            shown = [f"{v:.4f}" if v is not None else "-" for v in values]
            mean = statistics.mean(v for v in values if v is not None)
            print(f"| {key[0]} {key[1]} | " + " | ".join(shown) + f" | {mean:.4f} |")
        for tool in ("charlstm", "torch"):
            a, b = final.get((tool, "float32")), final.get((tool, "bfloat16"))
            if a and b:
                common = sorted(set(a) & set(b))
                diffs = [b[s] - a[s] for s in common]
                print(f"{tool}: bfloat16 - float32 over seeds {common}: mean "
                      f"{statistics.mean(diffs):+.4f}, worst {max(diffs):+.4f}")


def plot(paths, out) -> None:
    """Validation curves, one panel per corpus: each run's seeds as thin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line]
    corpora = sorted({r["corpus"] for r in rows})
    colours = {("charlstm", "float32"): "tab:blue", ("charlstm", "bfloat16"): "tab:orange",
               ("torch", "float32"): "tab:green", ("torch", "bfloat16"): "tab:red"}
    names = {("charlstm", "float32"): "charlstm float32", ("charlstm", "bfloat16"): "charlstm bfloat16",
             ("torch", "float32"): "PyTorch float32", ("torch", "bfloat16"): "PyTorch autocast bfloat16"}
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        labelled = set()
        for r in rows:
            if r["corpus"] != corpus:
                continue
            key = (r["tool"], r["precision"])
            steps, bpc = zip(*r["curve"])
            ax.plot(steps, bpc, color=colours[key], linewidth=1, alpha=0.8,
                    label=None if key in labelled else names[key])
            labelled.add(key)
        ax.set_title(f"{corpus}: M (lstm 2x256), equal steps, one line per seed")
        ax.set_xlabel("step")
        ax.set_ylabel("validation bits per character")
        ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-steps", type=int, default=250)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--torch", action="store_true", help="also PyTorch float32 and autocast")
    ap.add_argument("--out")
    ap.add_argument("--summary", nargs="+", metavar="JSON")
    ap.add_argument("--plot", metavar="PNG", help="with --summary: draw the curves")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
        if a.plot:
            plot(a.summary, a.plot)
        return
    out = Path(a.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["tool"], r["precision"], r["seed"]))
    for seed in a.seeds:
        for tool, precision in RUNS + (TORCH_RUNS if a.torch else ()):
            if (tool, precision, seed) in done:
                continue
            result = run_one(tool, precision, seed, a.corpus, a.steps, a.eval_steps, a.threads)
            print(f"{tool} {precision} seed {seed}: {result['curve'][-1][1]:.4f} bpc "
                  f"({result['wall_s']:.0f} s)", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
