"""Batch-1 generation: feed characters through the stack and draw the next one.

The cell step functions are the same ones the training kernels use, so sampling cannot
drift from training. The weights arrive stacked per layer, packed in panels for
charlstm's own product (kernels/panels.py; see ``charlstm.model.sample``). The cell is chosen
by an integer code (kernels/codes.py; charlstm/cells.py gives each cell its own) so one
compiled ``generate`` serves every cell.

A character's products stream every weight matrix once (3 MB at M, more than one core's
L2), so two cores each compute half of the hidden units: every gate's columns for those
units, from their share of each matrix, and the units' cell update. The cores meet at a
barrier after each layer, whose whole output the next reads, and after each draw
(kernels/sync.py). At M on an AMD EPYC Zen 5 this took sampling from 27,700 to 43,300
characters per second (benchmarks/sampling_cost.py).
"""
import math

import numpy as np

from .cifg import cifg_step
from .codes import CELL_CIFG, CELL_GRU, CELL_LSTM, CELL_PEEPHOLE
from .gru import gru_step
from .jit import kernel
from .lstm import lstm_step
from .panels import PANEL_WIDTH, panel_product
from .peephole import peephole_step
from .rnn import rnn_step
from .sync import barrier


@kernel(inline="always")
def _advance(rank, ranks, blocks, counts, reached, cell, table0, w_ih_p, bias, w_hh_p, bias_hn,
             peepholes, char_id, h_old, h_new, c_old, c_new, pre, gates, tanh_c):
    """Feed one character through every layer: this rank's unit blocks of the new state
    ``h_new``/``c_new`` [L, blocks, 1, H/blocks] from ``h_old``/``c_old``, meeting the
    other ranks after each layer (whose whole output the layer above reads). Returns
    the number of barriers reached, or -1 if another rank stopped answering."""
    L, _, _, Hb = h_old.shape
    H = blocks * Hb
    GHb = gates.shape[1]
    for k in range(L):
        for b in range(rank * blocks // ranks, (rank + 1) * blocks // ranks):
            # Block b's columns of every product, and their panels' rows (the columns were
            # ordered block by block when the panels were packed; see charlstm.model.sample).
            lo, hi = b * GHb, (b + 1) * GHb
            first, last = lo // PANEL_WIDTH, -(-hi // PANEL_WIDTH)
            if k == 0:
                pre[0, :] = table0[char_id, lo:hi]
            else:
                panel_product(h_new[k - 1].reshape(1, H), w_ih_p[k - 1, first * H:last * H], pre)
                pre[0, :] += bias[k - 1, lo:hi]
            panel_product(h_old[k].reshape(1, H), w_hh_p[k, first * H:last * H], gates)
            if cell == CELL_LSTM:
                lstm_step(gates, pre, c_old[k, b], c_new[k, b], h_new[k, b], tanh_c)
            elif cell == CELL_PEEPHOLE:
                w = peepholes[k, b]
                peephole_step(gates, pre, w[0], w[1], w[2], c_old[k, b], c_new[k, b],
                              h_new[k, b], tanh_c)
            elif cell == CELL_CIFG:
                cifg_step(gates, pre, c_old[k, b], c_new[k, b], h_new[k, b], tanh_c)
            elif cell == CELL_GRU:
                # tanh_c serves as the [1, Hb] scratch for h W_hn^T + b_hn.
                gru_step(gates, pre, bias_hn[k, b], h_old[k, b], h_new[k, b], tanh_c)
            else:
                rnn_step(gates, pre, h_new[k, b])
        reached += 1
        if not barrier(counts, rank, ranks, reached):
            return -1
    return reached


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
def generate(rank, ranks, counts, cell, table0, w_ih_p, bias, w_hh_p, bias_hn, peepholes,
             dec_p, dec_b, hs, cs, parity, feed_ids, first_input, uniforms, temperature, top_k,
             top_p, out_ids):
    """Feed ``feed_ids`` (state warm-up, outputs discarded), then starting from
    ``first_input`` draw len(out_ids) characters, each fed back as the next input.

    ``ranks`` calls run this at once, one per core, each with its ``rank``; every rank
    computes its share of the unit blocks (the columns of the products that feed them,
    and their cell updates), and rank 0 alone the decoder and the draws. The result does
    not depend on ``ranks``: each output is computed by the same code, whichever rank.

    Parameters
    ----------
    counts : int64 [ranks * sync.SLOT], zeroed before the ranks start (sync.barrier).
    cell : a cell's code (kernels/codes.py).
    table0 : [V, G*H] layer 0's weight_ih.T plus both biases (one-hot input as a lookup);
        for the GRU without bias_hh's n rows. Columns in block order (below).
    w_ih_p : [max(L-1, 1), panel_count(G*H) * H, PANEL_WIDTH] upper layers' weight_ih.T in
        panels; bias : [max(L-1,1), G*H] their summed biases (for the GRU, again without
        bias_hh's n rows). w_hh_p : [L, panel_count(G*H) * H, PANEL_WIDTH] weight_hh.T.
    Block order: the G*H gate columns regrouped so that unit block b's G*H/blocks columns
    (each gate's rows for units [b*Hb, (b+1)*Hb)) are contiguous, whole panels each.
    bias_hn : [L, blocks, H/blocks] the GRU's bias_hh n rows, added inside r * (...);
        peepholes : [L, blocks, 3, H/blocks] weight_ci, weight_cf, weight_co; each unused
        (any contents) for the other cells.
    dec_p : [panel_count(V) * H, PANEL_WIDTH] decoder.weight.T in panels; dec_b : [V].
    hs, cs : [2, L, blocks, 1, H/blocks] the state, double-buffered: ``hs[parity]`` on
        entry; after n characters fed or drawn it is in ``hs[(parity + n) % 2]``.
    uniforms : [len(out_ids)] in [0, 1). temperature, top_k, top_p : as ``_draw``.
    Returns the last character drawn (the next call's ``first_input``), or -1 if
    another rank stopped answering (its results are then incomplete).
    """
    blocks, Hb = hs.shape[2], hs.shape[4]
    GHb = table0.shape[1] // blocks
    V = dec_b.shape[0]
    H = blocks * Hb
    pre = np.empty((1, GHb), hs.dtype)
    gates = np.empty((1, GHb), hs.dtype)
    tanh_c = np.empty((1, Hb), hs.dtype)
    logits = np.empty((1, V), hs.dtype)
    probs = np.empty(V, np.float64)
    reached = 0
    for i in range(feed_ids.shape[0]):
        old = (parity + i) % 2
        reached = _advance(rank, ranks, blocks, counts, reached, cell, table0, w_ih_p, bias,
                           w_hh_p, bias_hn, peepholes, feed_ids[i], hs[old], hs[1 - old],
                           cs[old], cs[1 - old], pre, gates, tanh_c)
        if reached < 0:
            return -1
    parity = (parity + feed_ids.shape[0]) % 2
    x = first_input
    for n in range(out_ids.shape[0]):
        old = (parity + n) % 2
        reached = _advance(rank, ranks, blocks, counts, reached, cell, table0, w_ih_p, bias,
                           w_hh_p, bias_hn, peepholes, x, hs[old], hs[1 - old], cs[old],
                           cs[1 - old], pre, gates, tanh_c)
        if reached < 0:
            return -1
        if rank == 0:
            top = hs[1 - old, hs.shape[1] - 1].reshape(1, H)
            panel_product(top, dec_p, logits)
            logits[0, :] += dec_b
            x = _draw(logits[0], temperature, top_k, top_p, uniforms[n], probs)
            out_ids[n] = x
        # The others wait for the drawn character, which they feed next.
        reached += 1
        if not barrier(counts, rank, ranks, reached):
            return -1
        x = out_ids[n]
    return x
