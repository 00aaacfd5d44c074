"""Batch-1 generation: feed characters through the stack and draw the next one.

The cell step functions are the same ones the training kernels use, so sampling cannot
drift from training. The weights arrive stacked per layer (see ``charlstm.sample``).
The cell is chosen by an integer code (kernels/codes.py; charlstm/cells.py gives each
cell its own) so one compiled ``generate`` serves every cell.
"""
import math

from .jit import kernel
import numpy as np

from .cifg import cifg_step
from .codes import CELL_CIFG, CELL_GRU, CELL_LSTM, CELL_PEEPHOLE
from .gru import gru_step
from .lstm import lstm_step
from .peephole import peephole_step
from .rnn import rnn_step



@kernel
def vecmat(x, wt, out):
    """out = x @ wt for x [K], wt [K, N] (a weight stored transposed).

    Batch 1 is a matrix-vector product, bound by reading the weights once. BLAS's gemm
    with one row measured 3x slower here (threading and packing for nothing); this loop
    streams four weight rows at a time and LLVM vectorises it over N.
    """
    K, N = wt.shape
    out[:] = 0.0
    k = 0
    while k + 4 <= K:
        x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]
        r0, r1, r2, r3 = wt[k], wt[k + 1], wt[k + 2], wt[k + 3]
        for j in range(N):
            out[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j]
        k += 4
    while k < K:
        xk, row = x[k], wt[k]
        for j in range(N):
            out[j] += xk * row[j]
        k += 1


@kernel
def _advance(cell, table0, w_ih_t, bias, w_hh_t, bias_hn, peepholes, char_id, h, c, pre, gates,
             tanh_c, previous):
    """Feed one character; update h, c [L, 1, H] in place. ``previous`` is a [1, H]
    scratch for the state the cell step reads."""
    L = h.shape[0]
    for k in range(L):
        if k == 0:
            pre[0, :] = table0[char_id]
        else:
            vecmat(h[k - 1, 0], w_ih_t[k - 1], pre[0])
            pre[0, :] += bias[k - 1]
        vecmat(h[k, 0], w_hh_t[k], gates[0])
        # The cell steps read the old state from a copy rather than in place: with an
        # input that overlaps an output, LLVM keeps the gate loop scalar (lstm_step at
        # H=256 took 4.98 us in place against 0.41 us from a copy on an AMD EPYC Zen 5;
        # benchmarks/sampling_cost.py).
        if cell == CELL_LSTM:
            previous[...] = c[k]
            lstm_step(gates, pre, previous, c[k], h[k], tanh_c)
        elif cell == CELL_PEEPHOLE:
            previous[...] = c[k]
            w = peepholes[k]
            peephole_step(gates, pre, w[0], w[1], w[2], previous, c[k], h[k], tanh_c)
        elif cell == CELL_CIFG:
            previous[...] = c[k]
            cifg_step(gates, pre, previous, c[k], h[k], tanh_c)
        elif cell == CELL_GRU:
            # tanh_c serves as the [1, H] scratch for h W_hn^T + b_hn.
            previous[...] = h[k]
            gru_step(gates, pre, bias_hn[k], previous, h[k], tanh_c)
        else:
            rnn_step(gates, pre, h[k])


@kernel
def _draw(logits, temperature, top_k, top_p, u, probs):
    """Index drawn from softmax(logits / temperature) restricted to the top_k largest
    (0 = all), then to the nucleus: the smallest set of most likely characters whose
    probability mass (after the top-k cut) reaches top_p (1 = all; ties in probability
    are taken in index order). Temperature 0 is argmax. ``u`` is a uniform draw in [0, 1)."""
    V = logits.shape[0]
    if temperature == 0.0:
        return int(np.argmax(logits))
    threshold = -np.inf
    if 0 < top_k < V:
        threshold = np.sort(logits)[V - top_k]
    m = np.max(logits)
    total = 0.0
    for v in range(V):
        if logits[v] >= threshold:
            p = math.exp((float(logits[v]) - m) / temperature)
        else:
            p = 0.0
        probs[v] = p
        total += p
    if top_p < 1.0:
        # V is small: a stable sort by decreasing probability, then keep the prefix
        # whose mass first reaches top_p of the total; the rest is zeroed.
        order = np.argsort(-probs, kind="mergesort")
        limit = top_p * total
        acc = 0.0
        n_keep = V
        for j in range(V):
            acc += probs[order[j]]
            if acc >= limit:
                n_keep = j + 1
                break
        for j in range(n_keep, V):
            probs[order[j]] = 0.0
        total = 0.0
        for v in range(V):
            total += probs[v]
    target = u * total
    acc = 0.0
    last = 0
    for v in range(V):
        if probs[v] > 0.0:
            acc += probs[v]
            last = v
            if acc > target:
                return v
    return last


@kernel
def generate(cell, table0, w_ih_t, bias, w_hh_t, bias_hn, peepholes, dec_w_t, dec_b, h, c,
             feed_ids, first_input, uniforms, temperature, top_k, top_p, out_ids):
    """Feed ``feed_ids`` (state warm-up, outputs discarded), then starting from
    ``first_input`` draw len(out_ids) characters, each fed back as the next input.

    Parameters
    ----------
    cell : a cell's code (kernels/codes.py).
    table0 : [V, G*H] layer 0's weight_ih.T plus both biases (one-hot input as a lookup);
        for the GRU without bias_hh's n rows.
    w_ih_t : [max(L-1, 1), H, G*H] upper layers' weight_ih.T; bias : [max(L-1,1), G*H]
        their summed biases (for the GRU, again without bias_hh's n rows).
    w_hh_t : [L, H, G*H]. bias_hn : [L, H] the GRU's bias_hh n rows, which the cell adds
        inside r * (...); unused (any contents) for the other cells.
    peepholes : [L, 3, H] the peephole cell's weight_ci, weight_cf, weight_co per layer;
        unused (any contents) for the other cells.
    dec_w_t : [H, V]; dec_b : [V].
    h, c : [L, 1, H] state, updated in place. uniforms : [len(out_ids)] in [0, 1).
    temperature, top_k, top_p : as ``_draw`` takes them.
    Returns the last character drawn (the next call's ``first_input``).
    """
    GH = w_hh_t.shape[2]
    H = h.shape[2]
    V = dec_b.shape[0]
    pre = np.empty((1, GH), h.dtype)
    gates = np.empty((1, GH), h.dtype)
    tanh_c = np.empty((1, H), h.dtype)
    previous = np.empty((1, H), h.dtype)
    logits = np.empty((1, V), h.dtype)
    probs = np.empty(V, np.float64)
    for i in range(feed_ids.shape[0]):
        _advance(cell, table0, w_ih_t, bias, w_hh_t, bias_hn, peepholes, feed_ids[i], h, c, pre,
                 gates, tanh_c, previous)
    x = first_input
    for n in range(out_ids.shape[0]):
        _advance(cell, table0, w_ih_t, bias, w_hh_t, bias_hn, peepholes, x, h, c, pre, gates,
                 tanh_c, previous)
        vecmat(h[h.shape[0] - 1, 0], dec_w_t, logits[0])
        logits[0, :] += dec_b
        x = _draw(logits[0], temperature, top_k, top_p, uniforms[n], probs)
        out_ids[n] = x
    return x
