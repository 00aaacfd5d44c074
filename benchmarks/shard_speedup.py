"""One training step's forward and backward pass: the whole batch in one thread (BLAS
on every core) against the batch split into one shard per core (shards.py).

    python benchmarks/shard_speedup.py S M L R

Random ids over a 65-character vocabulary (tinyshakespeare's size); the two are timed
alternately, twice, medians of each. Also prints how far the two results differ: the
shards sum in another order, so float32 rounding differs, nothing else.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS, median_time  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.model.parameters import init_params  # noqa: E402
from charlstm.model.network import Network  # noqa: E402
from charlstm.model.shards import ShardedNetwork, default_threads  # noqa: E402

V = 65


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="*", default=["S", "M", "L", "R"], choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=None, help="shards (default: one per core)")
    a = ap.parse_args()
    for name in a.configs:
        config = TrainConfig(**CONFIGS[name])
        B, T = config.batch_size, config.seq_len
        shards = a.threads or default_threads(B)
        rng = np.random.default_rng(0)
        params = init_params(config, V, rng)
        inputs = rng.integers(0, V, (B, T)).astype(np.int32)
        targets = rng.integers(0, V, (B, T)).astype(np.int32)
        whole, split = Network(config, V, params), ShardedNetwork(config, V, params, shards)
        state_whole, state_split = whole.zero_state(B), whole.zero_state(B)
        repeats = 5 if name == "L" else 25
        t_whole, t_split = [], []
        for _ in range(2):
            t_whole.append(median_time(lambda: whole.loss_and_grad(inputs, targets, state_whole), repeats))
            t_split.append(median_time(lambda: split.loss_and_grad(inputs, targets, state_split), repeats))
        state_whole, state_split = whole.zero_state(B), whole.zero_state(B)
        whole.loss_and_grad(inputs, targets, state_whole)
        split.loss_and_grad(inputs, targets, state_split)
        scale = np.abs(whole.grads.flat).max()
        diff = np.abs(whole.grads.flat - split.grads.flat).max() / scale
        tw, ts = np.median(t_whole) * 1e3, np.median(t_split) * 1e3
        print(f"{name}: whole batch {tw:.1f} ms, {shards} shards {ts:.1f} ms: {tw / ts:.2f}x "
              f"(largest gradient difference {diff:.1e} of the largest gradient)", flush=True)
        split.close()


if __name__ == "__main__":
    main()
