"""The measurements behind charlstm's time-budget defaults (charlstm/budget.py) and
docs/QUALITY.md: candidate recipes trained for the same --time on the same corpus.

    python benchmarks/budget_recipes.py run --corpus ../shared/data/tinyshakespeare.txt \\
        --time 3m --recipes m-constant m-cosine ... [--out runs/budget]
    python benchmarks/budget_recipes.py table runs/budget/results.json
    python benchmarks/budget_recipes.py curves runs/budget/results.json [--out docs/quality]

``run`` trains each recipe of --recipes (RECIPES below: `charlstm train` options) on the
corpus with `charlstm train CORPUS --time T` and nothing else but the recipe's options:
every other option at its default, --blas auto and all the machine's cores included, so
a run is what a user's run with those options is, start-up inside the budget. The runs
go one after another (each uses every core). A recipe of "defaults" gives no options at
all: what charlstm chooses for --time alone. Validation runs at charlstm's default
cadence (every epoch and at the end).

Each run's directory (OUT/<corpus>/<time>/<recipe>-s<seed>) gets result.json when it
ends; a run whose result.json has the same options is not trained again. Every result
run so far, of any corpus or budget, is gathered into OUT/results.json: per run the
recipe, its options, charlstm's commit, the corpus, the budget, the seed, the steps and epochs taken, the
best and the final validation bpc, the validation curve [step, elapsed seconds, val bpc]
from the run's metrics.jsonl, and the machine (charlstm.tools.bench.machine_summary).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charlstm.tools.bench import format_machine, machine_summary  # noqa: E402
from charlstm.training.config import parse_duration  # noqa: E402

def recipe(hidden_size: int, lr: str, dropout: str, schedule: str = "cosine",
           lr_min: str | None = "1e-4", cell: str = "lstm") -> list[str]:
    """`charlstm train` options of a 2-layer model; what they leave out is the default."""
    return ([] if cell == "lstm" else ["--cell", cell]) + [
        "--hidden-size", str(hidden_size), "--num-layers", "2", "--lr", lr,
        "--lr-schedule", schedule, *([] if lr_min is None else ["--lr-min", lr_min]),
        "--dropout", dropout]


# name -> `charlstm train` options; "defaults": none, what charlstm chooses for --time
RECIPES = {
    "defaults": [],
    "m-constant": recipe(256, "2e-3", "0", schedule="constant", lr_min=None),
    "m-cosine": recipe(256, "2e-3", "0", lr_min="0"),
    "m-cosine-lr3": recipe(256, "3e-3", "0"),
    "m-cosine-lr3-d10": recipe(256, "3e-3", "0.1"),
    "m-cosine-lr3-d25": recipe(256, "3e-3", "0.25"),
    "m-gru-cosine-lr3": recipe(256, "3e-3", "0", cell="gru"),
    "384-cosine-lr3": recipe(384, "3e-3", "0"),
    "384-cosine-lr3-d25": recipe(384, "3e-3", "0.25"),
    "l-cosine-lr2": recipe(512, "2e-3", "0"),
    "l-cosine-lr2-d25": recipe(512, "2e-3", "0.25"),
    "l-cosine-lr2-d40": recipe(512, "2e-3", "0.4"),
}


def corpus_tag(corpus: str) -> str:
    return corpus.replace(":", "-") if corpus.startswith("builtin:") else Path(corpus).stem


def charlstm(*args) -> list[str]:
    return [sys.executable, "-m", "charlstm", *map(str, args)]


def run_dir(out: Path, corpus: str, budget: str, recipe: str, seed: int) -> Path:
    return out / corpus_tag(corpus) / budget / f"{recipe}-s{seed}"


def train_command(corpus: str, budget: str, recipe: str, seed: int, directory: Path) -> list[str]:
    seed_option = ["--seed", seed] if seed else []
    return charlstm("train", corpus, "--time", budget, *RECIPES[recipe], *seed_option,
                    "--quiet", "--force", "--out", directory)


def warm_up(out: Path, corpus: str) -> None:
    """One step of a tiny model per cell the recipes use, so that no timed run spends its
    budget compiling kernels (the compiled code serves every size)."""
    for cell in ("lstm", "gru"):
        subprocess.run(charlstm("train", corpus, "--cell", cell, "--hidden-size", 4,
                                "--num-layers", 1, "--seq-len", 8, "--batch-size", 2,
                                "--steps", 1, "--blas", "openblas", "--quiet", "--force",
                                "--out", out / ".warm-up" / cell),
                       cwd=ROOT, check=True, capture_output=True)


def read_result(directory: Path) -> dict:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    curve = [[r["step"], r["elapsed"], r["val_bpc"]] for r in rows if "val_bpc" in r]
    config = json.loads(subprocess.run(charlstm("info", directory / "last.npz", "--json"),
                                       cwd=ROOT, capture_output=True, text=True,
                                       check=True).stdout)
    return {"steps": rows[-1]["step"] if rows else 0,
            "epochs": rows[-1].get("epoch") if rows else None,
            "elapsed": rows[-1]["elapsed"] if rows else 0.0,
            "final_val_bpc": curve[-1][2] if curve else None,
            "best_val_bpc": min(v for _, _, v in curve) if curve else None,
            "val_curve": curve, "config": config.get("config")}


def command_run(a) -> None:
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.dry_run:
        warm_up(a.out, a.corpus)
    machine = machine_summary()
    # "defaults" means what charlstm chose at this commit
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or None
    for recipe in a.recipes:
        for seed in a.seeds:
            directory = run_dir(a.out, a.corpus, a.time, recipe, seed)
            command = train_command(a.corpus, a.time, recipe, seed, directory)
            options = command[3:-1]  # the train options, without interpreter and directory
            if a.dry_run:
                print(" ".join(map(str, command)))
                continue
            done = directory / "result.json"
            if done.is_file() and json.loads(done.read_text()).get("options") == options:
                continue
            directory.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{directory}: charlstm train exited {proc.returncode}:\n"
                                 f"{proc.stderr}")
            result = {"recipe": recipe, "options": options, "corpus": a.corpus,
                      "commit": commit,
                      "time": a.time, "seconds": parse_duration(a.time), "seed": seed,
                      "machine": machine, "stderr": proc.stderr.strip().splitlines()[-3:],
                      **read_result(directory)}
            done.write_text(json.dumps(result, indent=1))
            print(f"{corpus_tag(a.corpus)} {a.time} {recipe} s{seed}: {result['steps']} steps, "
                  f"best {result['best_val_bpc']:.4f}, final {result['final_val_bpc']:.4f} bpc",
                  flush=True)
    if a.dry_run:
        return
    runs = [json.loads(p.read_text()) for p in sorted(a.out.glob("*/*/*/result.json"))]
    path = a.out / "results.json"
    path.write_text(json.dumps({"runs": runs}, indent=1))
    print(f"wrote {path}")


def command_table(a) -> None:
    runs = json.loads(Path(a.results).read_text())["runs"]
    for key in sorted({(r["corpus"], r["time"]) for r in runs},
                      key=lambda k: (k[0], parse_duration(k[1]))):
        mine = [r for r in runs if (r["corpus"], r["time"]) == key]
        print(f"### {key[0]}, --time {key[1]} ({format_machine(mine[0]['machine'])})\n")
        print("| recipe | options | steps | epochs | best val bpc | final val bpc |")
        print("|---|---|---|---|---|---|")
        for r in sorted(mine, key=lambda r: r["best_val_bpc"]):
            options = " ".join(r["options"][r["options"].index(r["time"]) + 1:
                                            r["options"].index("--quiet")])
            options = f"`{options}`" if options else f"none (charlstm {r.get('commit') or '?'})"
            epochs = f"{r['epochs']:.1f}" if r.get("epochs") is not None else "-"
            print(f"| {r['recipe']} | {options} | {r['steps']} | {epochs} | "
                  f"{r['best_val_bpc']:.4f} | {r['final_val_bpc']:.4f} |")
        print()


def command_curves(a) -> None:
    """One PNG per corpus and budget: validation bpc against minutes, a line per run,
    with the horizontal lines of --anchor NAME=BPC@CORPUS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(Path(a.results).read_text())["runs"]
    a.out.mkdir(parents=True, exist_ok=True)
    for corpus, budget in dict.fromkeys((r["corpus"], r["time"]) for r in runs):
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in (r for r in runs if (r["corpus"], r["time"]) == (corpus, budget)
                  and r["val_curve"]):
            _, seconds, bpc = zip(*r["val_curve"])
            ax.plot([s / 60 for s in seconds], bpc, marker=".", lw=1,
                    label=r["recipe"] if r["recipe"] != "defaults"
                    else f"defaults of charlstm {r.get('commit') or '?'}")
        mine = [anchor.split("@", 1)[0].rsplit("=", 1) for anchor in a.anchor
                if anchor.split("@", 1)[-1] in (corpus, corpus_tag(corpus))]
        for (name, value), style in zip(mine, [":", "--", "-.", (0, (1, 4))] * 4):
            ax.axhline(float(value), color="grey", ls=style, lw=0.9, label=f"{name}: {value}")
        ax.set_xlabel("minutes")
        ax.set_ylabel("validation bits per character")
        ax.set_ylim(top=a.ymax)
        machine = runs[0]["machine"]
        ax.set_title(f"{corpus}, --time {budget}; {machine['cpu']}, {machine['cores']} cores",
                     fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = a.out / f"{corpus_tag(corpus)}-{budget}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    r = sub.add_parser("run", help="train recipes for one budget; gather results.json")
    r.add_argument("--corpus", default="../shared/data/tinyshakespeare.txt",
                   help="the text, relative to the repository's root, or builtin:pydoc")
    r.add_argument("--time", default="3m", help="each run's budget, as train --time takes it")
    r.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["defaults"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--out", type=Path, default=Path("runs/budget"))
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    r.set_defaults(func=command_run)
    t = sub.add_parser("table", help="markdown tables of a results.json")
    t.add_argument("results")
    t.set_defaults(func=command_table)
    c = sub.add_parser("curves", help="validation curves of a results.json, one PNG per corpus")
    c.add_argument("results")
    c.add_argument("--out", type=Path, default=Path("docs/quality"))
    c.add_argument("--anchor", action="append", default=[], metavar="NAME=BPC@CORPUS",
                   help="a horizontal line on CORPUS's plot (its path or tag)")
    c.add_argument("--ymax", type=float, default=None)
    c.set_defaults(func=command_curves)
    a = ap.parse_args(argv)
    if hasattr(a, "out"):
        a.out = a.out.resolve()
    a.func(a)


if __name__ == "__main__":
    main()
