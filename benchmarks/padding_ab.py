"""Whole training steps with the transposed weight_hh copy padded (blas.TRANSPOSED_PAD)
and unpadded, in fresh processes, interleaved.

    python benchmarks/padding_ab.py [--config M --config L] [--rounds 3]

Each measurement is the bench's own worker (charlstm.tools.bench.worker_charlstm) in a process
of its own with --blas openblas --step-weights transposed/stored, after setting the pad.
Where a transposed copy's rows lie in memory decides how much they collide in the
caches, so single products timed alone vary from process to process; whole steps are
what the padding is for.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from charlstm.kernels import blas
blas.TRANSPOSED_PAD = {pad}
from charlstm.tools.bench import worker_charlstm
row = worker_charlstm({config!r}, {corpus!r}, 12, 3, 2, "openblas", "transposed/stored")
print(json.dumps(row["step_ms"]))
"""


def step_ms(config, pad, corpus):
    code = WORKER.format(root=str(ROOT), pad=pad, config=config, corpus=corpus)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", choices=["S", "M", "L", "R"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", default=None)
    a = ap.parse_args()
    for config in a.config or ["M", "L"]:
        times = {0: [], 16: []}
        for _ in range(a.rounds):
            for pad in times:
                times[pad].append(step_ms(config, pad, a.corpus))
        print(f"{config}: step ms, unpadded " + ", ".join(f"{t:.1f}" for t in times[0])
              + "; padded by 16 " + ", ".join(f"{t:.1f}" for t in times[16]), flush=True)


if __name__ == "__main__":
    main()
