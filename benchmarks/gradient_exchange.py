"""What the rank-order gradient sum of --distributed mpi costs, against a training step.

    mpiexec -n 2 python benchmarks/gradient_exchange.py [--corpus ../shared/data/tinyshakespeare.txt]
        [--configs M L] [--repeat 20] [--json OUT.json]

For each configuration (bench.py's M and L), every rank builds the run's Trainer on its
rows of the batch (one thread each) and times, interleaved, a whole training step (its
forward and backward, the exchange, clipping and the update) and the exchange alone
(ranks.MpiRanks.ordered_sum on the gradient buffer), each the median of --repeat. Rank 0
prints the gradient's bytes, both times and the exchange's share of a step, and the
machine. The ranks of one machine exchange through shared memory, so this is the
exchange's floor: on a network add bytes / bandwidth (docs/SCALING.md models it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charlstm.tools.bench import CONFIGS, format_machine, machine_summary  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.parallel.ranks import MpiRanks  # noqa: E402
from charlstm.training.loop import Trainer, prepare_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--configs", nargs="+", default=["M", "L"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    a = parser.parse_args()
    ranks = MpiRanks()
    results = []
    for name in a.configs:
        shape = CONFIGS[name]
        config = TrainConfig(corpus=(a.corpus,), cell=shape["cell"], hidden_size=shape["hidden_size"],
                             num_layers=shape["num_layers"], batch_size=shape["batch_size"],
                             seq_len=shape["seq_len"], threads=1, ranks=ranks.size,
                             blas="openblas", step_weights="stored/stored", steps=10 ** 9)
        trainer = Trainer(config, prepare_data(config), ranks=ranks)
        for _ in range(3):
            trainer.train_step()  # kernels loaded, buffers warm
        steps, exchanges = [], []
        grads = trainer.net.grads.flat
        for _ in range(a.repeat):
            ranks.barrier()
            t0 = time.perf_counter()
            trainer.train_step()
            steps.append(time.perf_counter() - t0)
            ranks.barrier()
            t0 = time.perf_counter()
            ranks.ordered_sum(grads)
            exchanges.append(time.perf_counter() - t0)
        step, exchange = statistics.median(steps), statistics.median(exchanges)
        results.append({"config": name, "ranks": ranks.size, "gradient_bytes": int(grads.nbytes),
                        "step_seconds": step, "exchange_seconds": exchange,
                        "exchange_share": exchange / step})
        trainer.net.close()
    if ranks.is_root:
        machine = machine_summary()
        print(format_machine(machine))
        for r in results:
            print(f"{r['config']}: {r['ranks']} ranks, gradient {r['gradient_bytes'] / 1e6:.2f} MB; "
                  f"step {r['step_seconds'] * 1e3:.1f} ms, exchange {r['exchange_seconds'] * 1e3:.2f} ms "
                  f"({100 * r['exchange_share']:.1f}% of a step)")
        if a.json is not None:
            a.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
