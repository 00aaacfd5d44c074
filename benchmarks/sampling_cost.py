"""What one batch-1 character costs at a configuration's shapes, piece by piece, and what
splitting it over two cores gives.

    python benchmarks/sampling_cost.py [--config M]

- the LSTM cell step at batch 1 reading its old state in place (as sampling once did)
  and from another array (as it does now, from the other of two state buffers): an
  input that overlaps an output keeps LLVM's gate loop scalar;
- the matrix-vector products of one character (weight_hh of every layer and the upper
  layers' weight_ih), from a cache that cannot hold them all;
- the same products split over two cores by Numba's parallel regions, for each threading
  layer that loads here: one region costs more than the work it splits;
- whole samples (`Sampler.stream`) on one core and on two, each core computing half the
  units and meeting the other at spinning barriers (kernels/sync.py), interleaved.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numba import config as numba_config, njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS  # noqa: E402
from charlstm.kernels.lstm import lstm_step  # noqa: E402
from charlstm.kernels.panels import pack_panels, panel_buffer, panel_product  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.data.corpus import Vocab  # noqa: E402
from charlstm.model.parameters import init_params  # noqa: E402
from charlstm.model.sample import Sampler  # noqa: E402


@njit(error_model="numpy")
def _steps(gates, xproj, c_prev, c, h, tanh_c, n):
    for _ in range(n):
        lstm_step(gates, xproj, c_prev, c, h, tanh_c)


@njit(error_model="numpy")
def _products(x, panels, out, n):
    for _ in range(n):
        for k in range(panels.shape[0]):
            panel_product(x, panels[k], out)


@njit(error_model="numpy")
def _half(x, wt, out, lo, hi):
    K = wt.shape[0]
    for j in range(lo, hi):
        out[j] = 0.0
    for k in range(K):
        xk, row = x[k], wt[k]
        for j in range(lo, hi):
            out[j] += xk * row[j]


@njit(error_model="numpy", parallel=True)
def _products_split(x, weights, out, n):
    N = out.shape[0]
    for _ in range(n):
        for k in range(weights.shape[0]):
            for p in prange(2):
                _half(x, weights[k], out, p * N // 2, (p + 1) * N // 2)


def per_call_us(fn, *args, calls=2000, rounds=5):
    fn(*args, 10)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args, calls)
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="M", choices=sorted(CONFIGS))
    ap.add_argument("--layer", default=None, choices=["omp", "tbb", "workqueue"],
                    help="only this threading layer for the split products")
    a = ap.parse_args()
    spec = CONFIGS[a.config]
    H, L = spec["hidden_size"], spec["num_layers"]
    rng = np.random.default_rng(0)
    gates = (rng.standard_normal((1, 4 * H)) * 0.1).astype(np.float32)
    xproj = (rng.standard_normal((1, 4 * H)) * 0.1).astype(np.float32)
    c = np.zeros((2, 1, H), np.float32)
    h, tanh_c = np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)
    in_place = per_call_us(_steps, gates, xproj, c[0], c[0], h, tanh_c)
    copied = per_call_us(_steps, gates, xproj, c[1], c[0], h, tanh_c)
    print(f"{a.config}: lstm cell step at batch 1, H={H}: {in_place:.2f} us reading its state "
          f"in place, {copied:.2f} us from a copy")
    count = 2 * L - 1  # weight_hh of every layer, weight_ih of the layers above the first
    weights = rng.standard_normal((count, H, 4 * H)).astype(np.float32)
    x, out = rng.standard_normal(H).astype(np.float32), np.empty(4 * H, np.float32)
    panels = panel_buffer(H, 4 * H, np.float32, count=count)
    for k in range(count):
        pack_panels(weights[k], panels[k], False)
    alone = per_call_us(_products, x.reshape(1, H), panels, out.reshape(1, 4 * H), calls=500)
    print(f"{count} matrix-vector products [{H}] x [{H}, {4 * H}] per character: {alone:.1f} us "
          f"({count * H * 4 * H * 4 / alone / 1e3:.0f} GB/s of weights)")
    for layer in ([a.layer] if a.layer else ["omp", "tbb", "workqueue"]):
        numba_config.THREADING_LAYER = layer
        try:
            split = per_call_us(_products_split, x, weights, out, calls=500)
        except Exception as e:  # a layer this machine lacks (no libgomp, no tbb)
            print(f"  split over 2 cores, {layer}: not available ({type(e).__name__})")
            continue
        print(f"  split over 2 cores with parallel regions ({layer}): {split:.1f} us")
        break  # Numba loads one threading layer per process
    vocab = Vocab(sorted(map(chr, range(32, 97))))  # 65 characters, as tinyshakespeare
    cfg = TrainConfig(**{k: v for k, v in spec.items() if k in ("cell", "hidden_size", "num_layers")})
    model = argparse.Namespace(config=cfg, vocab=vocab,
                               params=init_params(cfg, len(vocab), np.random.default_rng(0)))
    samplers = {r: Sampler(model, ranks=r) for r in (1, 2) if r <= Sampler(model).blocks}
    rates = {r: [] for r in samplers}
    for sampler in samplers.values():
        sampler.prime("A", np.random.default_rng(0))
        "".join(sampler.stream(500, 1.0, 0, np.random.default_rng(1)))  # compile, warm
    for _ in range(5):
        for r, sampler in samplers.items():
            t0 = time.perf_counter()
            n = sum(map(len, sampler.stream(4000, 1.0, 0, np.random.default_rng(2))))
            rates[r].append(n / (time.perf_counter() - t0))
    for r, values in rates.items():
        print(f"  Sampler.stream on {r} core{'s' * (r > 1)}: {np.median(values):,.0f} chars/s")
    print(f"  Sampler's own measurement chooses {Sampler(model)._measure_ranks()} core(s)")


if __name__ == "__main__":
    main()
