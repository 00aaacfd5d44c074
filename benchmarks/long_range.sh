#!/usr/bin/env bash
# The long-range experiment of docs/LONG_RANGE.md: rnn, lstm and gru on builtin:recall:N
# for several N, the same step budget each, then their gradient flow.
#   bash benchmarks/long_range.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/long_range}
mkdir -p "$out" docs/long_range
charlstm() { python cli.py "$@"; }
for n in 4 16 48; do
  # The recall text itself, as a file for gradflow to read.
  python -c "from charlstm.recall import recall_text; print(recall_text($n), end='')" > "$out/recall-$n.txt"
  for cell in rnn lstm gru; do
    run="$out/$cell-N$n"
    charlstm train "builtin:recall:$n" --cell "$cell" --hidden-size 64 --num-layers 1 \
      --seq-len 64 --batch-size 32 --steps 1500 --eval-every 250 --seed 0 --quiet --force --out "$run"
    python -c "from charlstm.gradflow import gradflow; gradflow()" "$run/last.npz" "$out/recall-$n.txt" \
      --length 64 --chunks 16 --json -o "docs/long_range/flow-$cell-N$n.png" > "$run/gradflow.json"
    charlstm info "$run" --json > "$run/info.json"
  done
done
