"""Encoding speed and peak memory for a large corpus.

    python benchmarks/load_corpus.py --megabytes 100

Writes a corpus of the given size (a generated text repeated) to a temporary directory,
encodes it in a fresh process without and then with the token cache, and prints the
throughput and the peak RSS of each process.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from charlstm.data.tokens import load_corpus
cache = Path(sys.argv[2]) if sys.argv[2] != "-" else None
t0 = time.perf_counter()
c = load_corpus([sys.argv[1]], cache_dir=cache)
seconds = time.perf_counter() - t0
print(json.dumps({{"chars": len(c.ids), "seconds": seconds, "mb_per_s": len(c.ids) / 1e6 / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_block(n_chars: int) -> str:
    import random
    rng = random.Random(0)
    words = ("the of and to in a is that for it as was with be by on not he this are or his "
             "from at which but have an they you were her she there would their we him been").split()
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--megabytes", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        block = make_block(1_000_000)
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(a.megabytes):
                f.write(block)
        code = WORKER.format(root=str(ROOT))
        for label, cache in (("no cache", "-"), ("cache cold", str(Path(tmp) / "cache")),
                             ("cache warm", str(Path(tmp) / "cache"))):
            out = subprocess.run([sys.executable, "-c", code, str(path), cache], capture_output=True,
                                 text=True, check=True).stdout
            print(label, json.dumps(json.loads(out)))


if __name__ == "__main__":
    main()
