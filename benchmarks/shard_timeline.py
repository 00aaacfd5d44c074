"""Where a two-shard training step's time goes, timed inside the step, and what running
beside another shard costs one shard.

    python benchmarks/shard_timeline.py [--config S] [--steps 300]
    python benchmarks/shard_timeline.py --config S --beside {alone,thread,process}

The first form wraps each shard's Network.loss_and_grad and the sharded call in timers
and prints medians over the steps (after 20 untimed): the whole step, the sharded call,
each shard, how long after shard 0 shard 1 starts (the hand-off, handoff.py), the span
from the first shard's start to the last one's end, and what the sharded call spends
after it (the gradient sum) and before it.

The second form times shard 0's forward and backward alone in one thread, with a
second thread running shard 1 over and over (sharing the GIL and the caches), or with
another process doing so (sharing only the caches and memory).
"""
import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.kernels.blas import BLAS_THREADS  # noqa: E402
from charlstm.model.shards import shard_bounds  # noqa: E402
from charlstm.training.loop import Trainer, prepare_data  # noqa: E402
from charlstm.machine.tune import resolve  # noqa: E402


def trainer_for(name: str, corpus: str | None) -> Trainer:
    config = TrainConfig(corpus=(corpus,) if corpus else (), threads=2, **CONFIGS[name])
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), "auto", None)  # as `charlstm train` does
    return Trainer(config, data)


def timeline(trainer: Trainer, steps: int) -> None:
    sharded = trainer.net
    marks = {}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            marks[key] = (t0, time.perf_counter())
            return out
        return wrapper

    for s, net in enumerate(sharded.nets):
        net.loss_and_grad = timed(s, net.loss_and_grad)
    sharded.loss_and_grad = timed("call", sharded.loss_and_grad)
    rows = []
    for i in range(20 + steps):
        t0 = time.perf_counter()
        trainer.train_step()
        t1 = time.perf_counter()
        if i >= 20:
            (c0, c1), (a0, b0), (a1, b1) = marks["call"], marks[0], marks[1]
            rows.append([t1 - t0, c1 - c0, b0 - a0, b1 - a1, a1 - a0,
                         max(b0, b1) - min(a0, a1), c1 - max(b0, b1), a0 - c0])
    ms = np.median(np.array(rows), axis=0) * 1e3
    print("step %.3f ms | sharded call %.3f | shard 0 %.3f, shard 1 %.3f | shard 1 starts "
          "+%.3f | span %.3f | after the shards %.3f | before %.3f" % tuple(ms))


def beside(trainer: Trainer, mode: str, corpus: str | None, name: str) -> None:
    sharded = trainer.net
    inputs, targets = trainer.data.batches.chunk(0)
    B, T = inputs.shape
    state = {k: v.copy() for k, v in trainer.state.items()}
    bounds = shard_bounds(B, 2)
    BLAS_THREADS.set(1)

    def shard(s):
        lo, hi = bounds[s]
        rows = {k: v[:, lo:hi] for k, v in state.items()}
        sharded.nets[s].loss_and_grad(inputs[lo:hi], targets[lo:hi], rows, None, mean_over=B * T)

    if mode == "forever":  # the other process
        while True:
            shard(1)
    stop = threading.Event()
    other = None
    if mode == "thread":
        other = threading.Thread(target=lambda: [shard(1) for _ in iter(stop.is_set, True)])
        other.start()
    elif mode == "process":
        other = subprocess.Popen([sys.executable, __file__, "--config", name, "--beside", "forever"]
                                 + (["--corpus", corpus] if corpus else []))
        time.sleep(8)  # its start-up and kernels loaded
    for _ in range(20):
        shard(0)
    seconds = []
    for _ in range(400):
        t0 = time.perf_counter()
        shard(0)
        seconds.append(time.perf_counter() - t0)
    stop.set()
    if mode == "process":
        other.kill()
    elif other is not None:
        other.join()
    print(f"shard 0 {mode}: {1e3 * statistics.median(seconds):.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="S", choices=sorted(CONFIGS))
    ap.add_argument("--corpus")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--beside", choices=("alone", "thread", "process", "forever"))
    a = ap.parse_args()
    trainer = trainer_for(a.config, a.corpus)
    for _ in range(20):
        trainer.train_step()
    if a.beside:
        beside(trainer, a.beside, a.corpus, a.config)
    else:
        timeline(trainer, a.steps)


if __name__ == "__main__":
    main()
