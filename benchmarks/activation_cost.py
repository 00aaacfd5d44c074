"""What the LSTM's gate math costs per element: the float32 activations alone in a plain
loop, and the fused step kernel (3 sigmoids and 2 tanh per hidden unit) against two
other ways to write it (one 1-D row view with offsets; separate simple passes).

    python benchmarks/activation_cost.py

The variants are checked against the kernel's results before they are timed.
"""
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import median_time  # noqa: E402
from charlstm.kernels.activations import exp_f32, sigmoid, tanh  # noqa: E402
from charlstm.kernels.lstm import lstm_step  # noqa: E402

F32 = np.float32


@njit(error_model="numpy")
def sigmoid_loop(x, out):
    for i in range(x.size):
        out[i] = sigmoid(x[i])


@njit(error_model="numpy")
def tanh_loop(x, out):
    for i in range(x.size):
        out[i] = tanh(x[i])


@njit(error_model="numpy")
def exp_loop(x, out):
    for i in range(x.size):
        out[i] = exp_f32(x[i])


@njit(error_model="numpy")
def step_row_offsets(gates, xproj, c_prev, c, h, tanh_c):
    """The step with one 1-D view per row and the gates found by offset."""
    B, H = c.shape
    for b in range(B):
        g, x = gates[b], xproj[b]
        cp, cn, hn, tn = c_prev[b], c[b], h[b], tanh_c[b]
        for j in range(H):
            i = sigmoid(g[j] + x[j])
            f = sigmoid(g[H + j] + x[H + j])
            gg = tanh(g[2 * H + j] + x[2 * H + j])
            o = sigmoid(g[3 * H + j] + x[3 * H + j])
            g[j], g[H + j], g[2 * H + j], g[3 * H + j] = i, f, gg, o
            c_new = f * cp[j] + i * gg
            tc = tanh(c_new)
            cn[j], tn[j], hn[j] = c_new, tc, o * tc


@njit(error_model="numpy")
def step_separate_passes(gates, xproj, c_prev, c, h, tanh_c):
    """The step as simple passes: activations, cell update, tanh(c), output."""
    B, H = c.shape
    for b in range(B):
        g, x = gates[b], xproj[b]
        for j in range(2 * H):
            g[j] = sigmoid(g[j] + x[j])
        for j in range(2 * H, 3 * H):
            g[j] = tanh(g[j] + x[j])
        for j in range(3 * H, 4 * H):
            g[j] = sigmoid(g[j] + x[j])
        cp, cn, hn, tn = c_prev[b], c[b], h[b], tanh_c[b]
        for j in range(H):
            cn[j] = g[H + j] * cp[j] + g[j] * g[2 * H + j]
        for j in range(H):
            tn[j] = tanh(cn[j])
        for j in range(H):
            hn[j] = g[3 * H + j] * tn[j]


def main():
    x = np.random.default_rng(0).standard_normal(1 << 16).astype(F32)
    out = np.empty_like(x)
    for loop in (sigmoid_loop, tanh_loop, exp_loop):
        loop(x, out)  # compile
        seconds = median_time(lambda: loop(x, out), 30)
        print(f"{loop.__name__:<22} {seconds / x.size * 1e9:.3f} ns per element")

    B, H = 32, 128
    rng = np.random.default_rng(1)
    gates0 = rng.standard_normal((B, 4 * H)).astype(F32)
    xproj = rng.standard_normal((B, 4 * H)).astype(F32)
    c_prev = rng.standard_normal((B, H)).astype(F32)
    reference = None
    for step in (lstm_step, step_row_offsets, step_separate_passes):
        gates = gates0.copy()
        outs = [np.empty((B, H), F32) for _ in range(3)]
        step(gates, xproj, c_prev, *outs)
        result = [gates.copy()] + [o.copy() for o in outs]
        if reference is None:
            reference = result
        for got, want in zip(result, reference):
            np.testing.assert_allclose(got, want, atol=1e-6)
        # Repeated in place: the values saturate, which changes nothing for branch-free code.
        seconds = median_time(lambda: step(gates, xproj, c_prev, *outs), 200)
        print(f"{step.__name__:<22} {seconds * 1e6:.1f} us per step at B={B}, H={H}: "
              f"{seconds / (B * H) * 1e9:.2f} ns per hidden unit")


if __name__ == "__main__":
    main()
