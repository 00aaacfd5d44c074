"""The comparison behind docs/VARIANTS.md: every cell at the same size and the same time
budget, on a text and on the recall corpora.

    python benchmarks/variants.py run [--corpus ../shared/data/tinyshakespeare.txt]
        [--time 10m] [--seeds 0 1 2] [--jobs 2] [--recall 4 16 48] [--out runs/variants]
    python benchmarks/variants.py table runs/variants/results.json
    python benchmarks/variants.py curves runs/variants/results.json [--out docs/variants]

``run`` trains six variants: lstm, lstm with --forget-bias 1, peephole, cifg, gru and rnn,
all at the same hidden size and layers, for the same --time budget, once per seed, on
the corpus (default ../shared/data/tinyshakespeare.txt, from the repository's root) and
on builtin:recall:N for each N of --recall (at --recall-hidden-size, 1 layer by default,
as docs/LONG_RANGE.md). --jobs N runs N trainings at once, each with --threads 1, so
that parallel runs do not share cores. Every run validates every --eval-every steps and
at its end.

The budget is wall-clock time of the training loop, validations included (charlstm's
--time), so a cell that steps faster gets more steps: the comparison is of what each cell
learns in the same time on this machine, not per step. Kernels compile on the first step
of the first run that needs them, inside its budget; so before any timed run, each cell
trains one step on a tiny model, one at a time, which fills the kernel cache.

Each run's directory (OUT/<corpus>/<variant>-s<seed>) gets result.json when it ends,
with the run's train options; a run whose result.json has the same options is not trained
again, so an interrupted sweep continues where it stopped, and one with other settings
starts over. At the end every result is gathered into OUT/results.json: per run the variant,
its cell and forget bias, the corpus, the seed, the steps taken, the final and the best
validation bpc, and the validation curve [step, elapsed seconds, val_bpc] read from the
run's metrics.jsonl; for builtin:recall:N also the best possible bpc with and without
recall, 3N/(N+2) and (3N+3)/(N+2) (charlstm/recall.py), and the fraction of the gap
between them that the run closed. ``table`` prints the tables of docs/VARIANTS.md from it.

The defaults make 72 runs (6 variants, 3 seeds, the corpus and 3 recall corpora): about
six hours at --time 10m and --jobs 2. --dry-run prints the commands.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = "../shared/data/tinyshakespeare.txt"
# name -> options of `charlstm train`
VARIANTS = {
    "lstm": ["--cell", "lstm"],
    "lstm-fb1": ["--cell", "lstm", "--forget-bias", "1"],
    "peephole": ["--cell", "peephole"],
    "cifg": ["--cell", "cifg"],
    "gru": ["--cell", "gru"],
    "rnn": ["--cell", "rnn"],
}
RECALL = "builtin:recall:"


def recall_bounds(n: int) -> dict:
    """The best validation bpc on builtin:recall:N with and without recalling the key."""
    return {"with_recall": 3 * n / (n + 2), "without_recall": (3 * n + 3) / (n + 2)}


def corpus_tag(corpus: str) -> str:
    return f"recall-{corpus[len(RECALL):]}" if corpus.startswith(RECALL) else Path(corpus).stem


def charlstm(*args) -> list[str]:
    return [sys.executable, "-m", "charlstm", *map(str, args)]


def plan(a) -> list[dict]:
    """One entry per run: its corpus, variant, seed, model size and directory."""
    corpora = [] if a.only_recall else [(a.corpus, a.hidden_size, a.num_layers, a.time)]
    corpora += [(f"{RECALL}{n}", a.recall_hidden_size, a.recall_num_layers, a.recall_time or a.time)
                for n in a.recall]
    runs = []
    for corpus, hidden, layers, budget in corpora:
        for variant in a.variants:
            for seed in a.seeds:
                runs.append({"corpus": corpus, "variant": variant, "seed": seed,
                             "hidden_size": hidden, "num_layers": layers, "time": budget,
                             "dir": a.out / corpus_tag(corpus) / f"{variant}-s{seed}"})
    return runs


def train_command(run: dict, a) -> list[str]:
    blas = ["--blas", a.blas] + (["--step-weights", a.step_weights] if a.step_weights else [])
    return charlstm("train", run["corpus"], *VARIANTS[run["variant"]],
                    "--hidden-size", run["hidden_size"], "--num-layers", run["num_layers"],
                    "--seq-len", a.seq_len, "--batch-size", a.batch_size, "--seed", run["seed"],
                    "--time", run["time"], "--eval-every", a.eval_every, "--threads", 1, *blas,
                    "--quiet", "--force", "--out", run["dir"])


def warm_up_commands(a) -> list[list[str]]:
    """One step of a tiny model per cell, one after the other: compiles the kernels into
    the cache before any budget is timed. The compiled code does not depend on the BLAS
    or the model's size, so the cheapest choice serves every run."""
    cells = sorted({VARIANTS[v][1] for v in a.variants})
    return [charlstm("train", a.corpus, "--cell", cell, "--hidden-size", 4, "--num-layers", 1,
                     "--seq-len", 8, "--batch-size", 2, "--steps", 1, "--threads", 1,
                     "--blas", "openblas", "--step-weights", "stored/stored", "--quiet", "--force",
                     "--out", a.out / ".warm-up" / cell)
            for cell in cells]


def options(command: list[str]) -> list[str]:
    """A train command without the interpreter: what identifies a run's settings."""
    return command[3:]


def read_result(run: dict) -> dict:
    """What the run's metrics.jsonl says, with the run's identity."""
    rows = [json.loads(line) for line in (run["dir"] / "metrics.jsonl").read_text().splitlines()]
    curve = [[r["step"], r["elapsed"], r["val_bpc"]] for r in rows if "val_bpc" in r]
    variant = VARIANTS[run["variant"]]
    result = {
        "variant": run["variant"], "cell": variant[1],
        "forget_bias": (float(variant[variant.index("--forget-bias") + 1])
                        if "--forget-bias" in variant else None),
        "corpus": run["corpus"], "seed": run["seed"], "time": run["time"],
        "hidden_size": run["hidden_size"],
        "num_layers": run["num_layers"], "steps": rows[-1]["step"] if rows else 0,
        "elapsed": rows[-1]["elapsed"] if rows else 0.0,
        "final_val_bpc": curve[-1][2] if curve else None,
        "best_val_bpc": min(v for _, _, v in curve) if curve else None,
        "val_curve": curve,
    }
    if run["corpus"].startswith(RECALL):
        bounds = recall_bounds(int(run["corpus"][len(RECALL):]))
        result["bounds"] = bounds
        if result["best_val_bpc"] is not None:
            gap = bounds["without_recall"] - bounds["with_recall"]
            result["recall_fraction"] = (bounds["without_recall"] - result["best_val_bpc"]) / gap
    return result


def run_one(run: dict, a) -> dict:
    done = run["dir"] / "result.json"
    command = train_command(run, a)
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("options") == options(command):
            return result
    run["dir"].parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{run['dir']}: charlstm train exited {proc.returncode}:\n{proc.stderr}")
    result = dict(read_result(run), options=options(command))
    done.write_text(json.dumps(result, indent=1))
    print(f"{run['dir'].relative_to(a.out)}: {result['steps']} steps, final val "
          f"{result['final_val_bpc']} bpc", flush=True)
    return result


def command_run(a) -> None:
    runs = plan(a)
    if a.dry_run:
        for command in warm_up_commands(a) + [train_command(r, a) for r in runs]:
            print(" ".join(command))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    for command in warm_up_commands(a):
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda r: run_one(r, a), runs))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                if k not in ("func", "dry_run")}
    path = a.out / "results.json"
    path.write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
    print(f"wrote {path}")


def summary(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "- | -"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} | {sd:.3f}"


def command_table(a) -> None:
    data = json.loads(Path(a.results).read_text())
    runs = data["runs"]
    order = list(VARIANTS)
    for corpus in dict.fromkeys(r["corpus"] for r in runs):
        mine = [r for r in runs if r["corpus"] == corpus]
        first = mine[0]
        recall = corpus.startswith(RECALL)
        budget = first.get("time") or ((data["settings"].get("recall_time") if recall else None)
                                        or data["settings"]["time"])
        print(f"### {corpus}: {first['num_layers']} x {first['hidden_size']}, {budget} per run\n")
        head = "| variant | final val bpc, mean | sd | best, mean | sd | steps, mean | per seed (final) |"
        if recall:
            b = first["bounds"]
            print(f"Best possible: {b['with_recall']:.3f} with recall, "
                  f"{b['without_recall']:.3f} without.\n")
            head += " gap closed, mean |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for variant in sorted({r["variant"] for r in mine}, key=order.index):
            rs = sorted((r for r in mine if r["variant"] == variant), key=lambda r: r["seed"])
            per_seed = " / ".join("-" if r["final_val_bpc"] is None else f"{r['final_val_bpc']:.3f}"
                                  for r in rs)
            line = (f"| {variant} | {summary([r['final_val_bpc'] for r in rs])} | "
                    f"{summary([r['best_val_bpc'] for r in rs])} | "
                    f"{statistics.mean(r['steps'] for r in rs):.0f} | {per_seed} |")
            if recall:
                fractions = [r.get("recall_fraction") for r in rs]
                fractions = [f for f in fractions if f is not None]
                line += f" {statistics.mean(fractions):.2f} |" if fractions else " - |"
            print(line)
        print()


def command_curves(a) -> None:
    """One PNG per corpus: validation bpc against training seconds, a line per run,
    coloured by variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(a.results).read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for corpus in dict.fromkeys(r["corpus"] for r in data["runs"]):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        seen = set()
        for r in (r for r in data["runs"] if r["corpus"] == corpus):
            if not r["val_curve"]:
                continue
            _, seconds, bpc = zip(*r["val_curve"])
            ax.plot(seconds, bpc, color=colours[r["variant"]], lw=1, alpha=0.8,
                    label=None if r["variant"] in seen else r["variant"])
            seen.add(r["variant"])
        if corpus.startswith(RECALL):
            bounds = recall_bounds(int(corpus[len(RECALL):]))
            for key, style in (("with_recall", ":"), ("without_recall", "--")):
                ax.axhline(bounds[key], color="grey", ls=style, lw=0.8)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("validation bits per character")
        ax.set_title(corpus)
        ax.legend()
        fig.tight_layout()
        path = out / f"{corpus_tag(corpus)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    r = sub.add_parser("run", help="train every variant and gather results.json")
    r.add_argument("--corpus", default=DEFAULT_CORPUS,
                   help="the text to train on, relative to the repository's root or absolute")
    r.add_argument("--time", default="10m", help="each run's budget, as train --time takes it")
    r.add_argument("--hidden-size", type=int, default=256)
    r.add_argument("--num-layers", type=int, default=2)
    r.add_argument("--seq-len", type=int, default=64)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    r.add_argument("--recall", type=int, nargs="*", default=[4, 16, 48],
                   help="N of the builtin:recall:N corpora to run too (none: only the corpus)")
    r.add_argument("--recall-time", default=None,
                   help="each recall run's budget  [default: --time]")
    r.add_argument("--only-recall", action="store_true", help="skip the text corpus")
    r.add_argument("--recall-hidden-size", type=int, default=64)
    r.add_argument("--recall-num-layers", type=int, default=1)
    r.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    r.add_argument("--blas", default="auto", help="as train --blas")
    r.add_argument("--step-weights", default=None, help="as train --step-weights")
    r.add_argument("--jobs", type=int, default=2, help="trainings at once, each on one core")
    r.add_argument("--out", type=Path, default=Path("runs/variants"))
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    r.set_defaults(func=command_run)
    c = sub.add_parser("curves", help="validation curves of a results.json, one PNG per corpus")
    c.add_argument("results")
    c.add_argument("--out", type=Path, default=Path("docs/variants"))
    c.set_defaults(func=command_curves)
    t = sub.add_parser("table", help="the markdown tables of a results.json")
    t.add_argument("results")
    t.set_defaults(func=command_table)
    a = ap.parse_args(argv)
    if hasattr(a, "out"):
        a.out = a.out.resolve()
    a.func(a)


if __name__ == "__main__":
    main()
