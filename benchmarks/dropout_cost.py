"""What --dropout costs per training step: median step time with dropout 0 and 0.3,
alternating twice, for the benchmark configurations given.

    python benchmarks/dropout_cost.py S M --corpus ../shared/data/tinyshakespeare.txt
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from charlstm.bench import CONFIGS  # noqa: E402
from charlstm.config import TrainConfig  # noqa: E402
from charlstm.train import Trainer, prepare_data  # noqa: E402
ap = argparse.ArgumentParser()
ap.add_argument("configs", nargs="+")
ap.add_argument("--corpus", default=None)
a = ap.parse_args()
for name in a.configs:
    res = {}
    for p in (0.0, 0.3, 0.0, 0.3):
        cfg = TrainConfig(corpus=(a.corpus,) if a.corpus else (), dropout=p, **CONFIGS[name])
        tr = Trainer(cfg, prepare_data(cfg))
        for _ in range(3): tr.train_step()
        ts = []
        for _ in range(12):
            t0 = time.perf_counter(); tr.train_step(); ts.append(time.perf_counter() - t0)
        res.setdefault(p, []).append(np.median(ts) * 1e3)
    print(name, {p: [f"{v:.2f}" for v in vs] for p, vs in res.items()},
          f"overhead {np.median(res[0.3]) / np.median(res[0.0]) - 1:+.1%}")
