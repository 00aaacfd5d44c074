"""Can the two cores overlap S's recurrence with its other matrix products?

    OPENBLAS_NUM_THREADS=1 python benchmarks/overlap_probe.py   # one BLAS thread per caller
    python benchmarks/overlap_probe.py                          # two (the default)

Times, at config S's shapes (B=32, H=128, T=64): one LSTM layer's forward and backward
recurrence; three [2016, 512]^T x [2016, 128] products (about the chunk-GEMM work of an S
step); both one after the other; and both at once, from two Python threads running
GIL-free compiled code. This is a feasibility measurement for restructuring the step,
not something charlstm does yet.
"""
import sys
import threading
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import median_time  # noqa: E402
from charlstm.kernels.blas import matmul_tn  # noqa: E402
from charlstm.kernels.lstm import lstm_backward, lstm_forward  # noqa: E402

F32 = np.float32
B, H, T = 32, 128, 64
PRODUCTS = 3


@njit(nogil=True)
def recurrence(xproj, w, h0, c0, hs, cs, gates, tanh_cs, dhs, dh, dc, dpre):
    lstm_forward(xproj, w, h0, c0, hs, cs, gates, tanh_cs)
    lstm_backward(w, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)


@njit(nogil=True)
def products(a, b, out, count):
    for _ in range(count):
        matmul_tn(a, b, out)


def recurrence_arguments(B, H, T, rng):
    """Random inputs and output buffers for ``recurrence`` over B streams of T steps."""
    hs = np.empty((T, B, H), F32)
    return (rng.standard_normal((T, B, 4 * H)).astype(F32),
            (rng.standard_normal((4 * H, H)) * 0.1).astype(F32),
            np.zeros((B, H), F32), np.zeros((B, H), F32), hs, np.empty_like(hs),
            np.empty((T, B, 4 * H), F32), np.empty_like(hs),
            rng.standard_normal((T, B, H)).astype(F32), np.zeros((B, H), F32),
            np.zeros((B, H), F32), np.empty((T, B, 4 * H), F32))


def median_ms(fn, repeats=9):
    return median_time(fn, repeats) * 1e3


def main():
    rng = np.random.default_rng(0)
    rec_args = recurrence_arguments(B, H, T, rng)
    prod_args = (rng.standard_normal(((T - 1) * B, 4 * H)).astype(F32),
                 rng.standard_normal(((T - 1) * B, H)).astype(F32),
                 np.empty((4 * H, H), F32), PRODUCTS)
    recurrence(*rec_args)  # compile
    products(*prod_args)

    def overlapped():
        helper = threading.Thread(target=products, args=prod_args)
        helper.start()
        recurrence(*rec_args)
        helper.join()

    rec_ms = median_ms(lambda: recurrence(*rec_args))
    prod_ms = median_ms(lambda: products(*prod_args))
    both_ms = median_ms(overlapped)
    print(f"recurrence {rec_ms:.2f} ms, other products {prod_ms:.2f} ms, one after the "
          f"other {rec_ms + prod_ms:.2f} ms, at once on two threads {both_ms:.2f} ms")


if __name__ == "__main__":
    main()
