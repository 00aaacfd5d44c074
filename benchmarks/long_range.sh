#!/usr/bin/env bash
# The long-range experiment of docs/LONG_RANGE.md: rnn, lstm and gru on builtin:recall:N
# for several N, the same step budget each and several seeds, then their gradient flow.
#   STEPS=5000 SEEDS="0 1 2" JOBS=2 bash benchmarks/long_range.sh [OUT_DIR]
#   python benchmarks/long_range_table.py [OUT_DIR]     # the tables of the document
#   python benchmarks/long_range_plot.py OUT_DIR docs/long_range   # its plots
# JOBS runs that many trainings at once, each on one core (--threads 1, which also keeps
# its BLAS on one thread) so that parallel runs do not fight over the cores. gradflow has
# no --threads: its BLAS is kept to one thread by OpenBLAS's own variable.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/long_range}
steps=${STEPS:-5000}
seeds=${SEEDS:-0 1 2}
jobs=${JOBS:-2}
mkdir -p "$out"

one_run() {  # cell n seed
  local cell=$1 n=$2 seed=$3 run="$out/$1-N$2-s$3"
  python cli.py train "builtin:recall:$n" --cell "$cell" --threads 1 \
    --hidden-size 64 --num-layers 1 --seq-len 64 --batch-size 32 --steps "$steps" \
    --eval-every 500 --seed "$seed" --quiet --force --out "$run"
  OPENBLAS_NUM_THREADS=1 python cli.py gradflow "$run/last.npz" "builtin:recall:$n" --length 64 --chunks 16 --json > "$run/gradflow.json"
}
export -f one_run
export out steps

for n in 4 16 48; do for cell in rnn lstm gru; do for seed in $seeds; do
  echo "$cell $n $seed"
done; done; done | xargs -P "$jobs" -L 1 bash -c 'one_run "$@"' _
