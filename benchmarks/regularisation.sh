#!/usr/bin/env bash
# Does --dropout / --weight-decay hold off overfitting? An lstm 128 x 2 (~240k parameters)
# on a deliberately small text (the first 30,000 characters of the corpus given, 27,000
# to train on: 13 steps an epoch), trained for ~90 epochs, long enough to overfit.
#   bash benchmarks/regularisation.sh ../shared/data/tinyshakespeare.txt [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=$1
out=${2:-runs/regularisation}
steps=${STEPS:-1200}
mkdir -p "$out"
head -c 30000 "$corpus" > "$out/small.txt"
train() {  # name, then options
  local name=$1; shift
  python cli.py train "$out/small.txt" --threads "${THREADS:-2}" --steps "$steps" --eval-every 25 --seed 0 \
    --hidden-size 128 --num-layers 2 \
    --quiet --force --out "$out/$name" "$@"
}
train none
train dropout-0.25 --dropout 0.25
train dropout-0.5 --dropout 0.5
train wd-0.1 --weight-decay 0.1
train dropout-0.25-wd-0.1 --dropout 0.25 --weight-decay 0.1
python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("| run | best val bpc | at step | val bpc at the end | train bpc at the end |")
print("|---|---|---|---|---|")
for name in ("none", "dropout-0.25", "dropout-0.5", "wd-0.1", "dropout-0.25-wd-0.1"):
    rows = [json.loads(l) for l in (Path(sys.argv[1]) / name / "metrics.jsonl").read_text().splitlines()]
    val = [(r["val_bpc"], r["step"]) for r in rows if "val_bpc" in r]
    best = min(val)
    train = [r["train_bpc"] for r in rows if "train_bpc" in r][-5:]
    print(f"| {name} | {best[0]:.3f} | {best[1]} | {val[-1][0]:.3f} | {sum(train) / len(train):.3f} |")
PY
