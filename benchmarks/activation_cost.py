"""What the LSTM's gate math costs per element: the float32 activations alone in a plain
loop, and the fused step kernel (3 sigmoids and 2 tanh per hidden unit) against two
other ways to write it (one 1-D row view with offsets; separate simple passes).

    python benchmarks/activation_cost.py
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from numba import njit  # noqa: E402

from charlstm.kernels.activations import sigmoid, tanh, exp_f32
from charlstm.kernels.lstm import lstm_step

@njit(error_model="numpy")
def sig_loop(x, out):
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
def step_rows(gates, xproj, c_prev, c, h, tanh_c):
    # one 1-D view per row, offsets by arithmetic
    B, H = c.shape
    for b in range(B):
        g = gates[b]; x = xproj[b]; cp = c_prev[b]; cn = c[b]; hn = h[b]; tn = tanh_c[b]
        for j in range(H):
            i = sigmoid(g[j] + x[j])
            f = sigmoid(g[H + j] + x[H + j])
            gg = tanh(g[2*H + j] + x[2*H + j])
            o = sigmoid(g[3*H + j] + x[3*H + j])
            g[j] = i; g[H + j] = f; g[2*H + j] = gg; g[3*H + j] = o
            c_new = f * cp[j] + i * gg
            tc = tanh(c_new)
            cn[j] = c_new; tn[j] = tc; hn[j] = o * tc

@njit(error_model="numpy")
def step_passes(gates, xproj, c_prev, c, h, tanh_c):
    # separate simple passes over flat rows
    B, H = c.shape
    for b in range(B):
        g = gates[b]; x = xproj[b]
        for j in range(2 * H):
            g[j] = sigmoid(g[j] + x[j])
        for j in range(2 * H, 3 * H):
            g[j] = tanh(g[j] + x[j])
        for j in range(3 * H, 4 * H):
            g[j] = sigmoid(g[j] + x[j])
        cp = c_prev[b]; cn = c[b]; hn = h[b]; tn = tanh_c[b]
        for j in range(H):
            c_new = g[H + j] * cp[j] + g[j] * g[2*H + j]
            cn[j] = c_new
        for j in range(H):
            tn[j] = tanh(cn[j])
        for j in range(H):
            hn[j] = g[3*H + j] * tn[j]

def med(f, n=30):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return np.median(ts)

f32 = np.float32
x = np.random.default_rng(0).standard_normal(1 << 16).astype(f32)
o = np.empty_like(x)
for fn in (sig_loop, tanh_loop, exp_loop):
    fn(x, o)
    print(fn.__name__, f"{med(lambda: fn(x, o)) / x.size * 1e9:.3f} ns/elem")
B, H = 32, 128
rng = np.random.default_rng(1)
gates0 = rng.standard_normal((B, 4*H)).astype(f32); xp = rng.standard_normal((B, 4*H)).astype(f32)
cprev = rng.standard_normal((B, H)).astype(f32)
outs = [np.empty((B, H), f32) for _ in range(3)]
ref = None
for fn in (lstm_step, step_rows, step_passes):
    g = gates0.copy(); fn(g, xp, cprev, *outs)
    res = (g.copy(), [a.copy() for a in outs])
    if ref is None: ref = res
    else:
        assert np.allclose(res[0], ref[0], atol=1e-6) and all(np.allclose(a, b, atol=1e-6) for a, b in zip(res[1], ref[1]))
    def run():
        fn(g, xp, cprev, *outs)
    t = med(run, 200)
    print(fn.__name__ if hasattr(fn, '__name__') else fn, f"{t*1e6:.1f} us per step, {t/(B*H)*1e9:.2f} ns/unit")
