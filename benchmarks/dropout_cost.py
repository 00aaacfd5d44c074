"""What --dropout costs per training step: drawing one step's masks, timed alone (median
of 50), and the median step time with dropout 0 and 0.3, each measured twice in
alternation (on a noisy machine the second figure swings by 10-15% either way).

    python benchmarks/dropout_cost.py S M --corpus ../shared/data/tinyshakespeare.txt
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS, median_time  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.model.dropout import DropoutMasks  # noqa: E402
from charlstm.training.loop import Trainer, prepare_data  # noqa: E402

WARMUP, STEPS = 3, 12


def median_step_ms(config):
    trainer = Trainer(config, prepare_data(config))
    for _ in range(WARMUP):
        trainer.train_step()
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--dropout", type=float, default=0.3)
    a = ap.parse_args()
    for name in a.configs:
        spec = CONFIGS[name]
        masks = DropoutMasks(a.dropout, spec["num_layers"], spec["seq_len"], spec["batch_size"],
                             spec["hidden_size"])
        rng = np.random.default_rng(0)
        masks.draw(rng)
        draw_s = median_time(lambda: masks.draw(rng), 50)
        print(f"{name}: drawing one step's masks ({masks.masks.size:,} values): "
              f"{draw_s * 1e3:.2f} ms")
        times = {0.0: [], a.dropout: []}
        for p in (0.0, a.dropout, 0.0, a.dropout):
            config = TrainConfig(corpus=(a.corpus,) if a.corpus else (), dropout=p, **CONFIGS[name])
            times[p].append(median_step_ms(config))
        overhead = np.median(times[a.dropout]) / np.median(times[0.0]) - 1
        print(f"{name}: step without dropout {' / '.join(f'{t:.1f}' for t in times[0.0])} ms, "
              f"with {a.dropout} {' / '.join(f'{t:.1f}' for t in times[a.dropout])} ms: "
              f"{overhead:+.1%}")


if __name__ == "__main__":
    main()
