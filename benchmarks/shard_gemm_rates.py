"""GFLOP/s of the matrix products one shard runs, on one core (one BLAS thread).

    python benchmarks/shard_gemm_rates.py            # S's shard: 16 streams, H=128
    python benchmarks/shard_gemm_rates.py --hidden 256

Per time step: the forward's h @ W_hh^T (what the kernels run), the same product with
W_hh stored transposed (h @ W_hh^T as `nn`), and the backward's dp @ W_hh. Per chunk
(T*B/2 rows): the decoder and the weight-gradient products. And a 2048^3 product for
the core's peak. Medians of repeated calls through the kernels' own BLAS entry points.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import median_time  # noqa: E402
from charlstm.kernels.blas import BLAS_THREADS, gemm_nn, gemm_nt, gemm_tn  # noqa: E402

F32 = np.float32


@njit(nogil=True)
def repeat_nt(a, b, out, n):
    for _ in range(n):
        gemm_nt(a, b, out)


@njit(nogil=True)
def repeat_nn(a, b, out, n):
    for _ in range(n):
        gemm_nn(a, b, out)


@njit(nogil=True)
def repeat_tn(a, b, out, n):
    for _ in range(n):
        gemm_tn(a, b, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="streams of one shard")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=65)
    a = ap.parse_args()
    BLAS_THREADS.set(1)
    rng = np.random.default_rng(0)
    B, H, T, V = a.batch, a.hidden, a.seq_len, a.vocab
    G, N = 4 * H, a.seq_len * a.batch

    def m(*shape):
        return rng.standard_normal(shape).astype(F32)

    w = m(G, H)
    cases = [  # (label, repeat kernel, a, b, out, flops, calls per timing)
        ("per step: h @ W^T (as run)", repeat_nt, m(B, H), w, m(B, G), 2 * B * H * G, T),
        ("per step: h @ W^T, W stored transposed", repeat_nn, m(B, H), np.ascontiguousarray(w.T),
         m(B, G), 2 * B * H * G, T),
        ("per step: dp @ W (backward)", repeat_nn, m(B, G), w, m(B, H), 2 * B * H * G, T),
        ("chunk: decoder [N,H] x [H,V]", repeat_nt, m(N, H), m(V, H), m(N, V), 2 * N * H * V, 4),
        ("chunk: decoder weight gradient", repeat_tn, m(N, V), m(N, H), m(V, H), 2 * N * H * V, 4),
        ("chunk: weight_hh gradient [N,4H]^T x [N,H]", repeat_tn, m(N, G), m(N, H), m(G, H),
         2 * N * H * G, 4),
        ("chunk: input projection [N,H] x [H,4H]", repeat_nt, m(N, H), w, m(N, G), 2 * N * H * G, 4),
        ("square 2048^3 (the core's peak)", repeat_nn, m(2048, 2048), m(2048, 2048),
         m(2048, 2048), 2 * 2048 ** 3, 1),
    ]
    print(f"one BLAS thread, B={B}, H={H}, T={T}:")
    for label, fn, x, y, out, flops, calls in cases:
        fn(x, y, out, 1)
        seconds = median_time(lambda: fn(x, y, out, calls), 15 if calls > 1 else 3) / calls
        print(f"  {label:<44} {seconds * 1e6:9.1f} us  {flops / seconds / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
