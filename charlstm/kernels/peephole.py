"""Peephole LSTM layer: forward over a chunk beside its backward twin.

Gers, Schraudolph & Schmidhuber (2002), "Learning precise timing with LSTM recurrent
networks", JMLR 3:115-143: the gates also look at the cell state, each through a
diagonal weight vector of its own; the input and forget gates see c_{t-1}, the output
gate the new c_t::

    i = sigmoid(a_i + w_ci * c_{t-1})
    f = sigmoid(a_f + w_cf * c_{t-1})
    g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    o = sigmoid(a_o + w_co * c_t)
    h_t = o * tanh(c_t)

with a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh in PyTorch's gate order (i, f, g, o),
exactly as in kernels/lstm.py. The peephole terms are elementwise, so they join the gate
pass, not the matrix products; the input projection is computed for all T steps before
the kernel is called, as for the LSTM.

Backward, per step, with da the gradient of a gate's pre-activation: c_t reaches the
loss through h_t, through o (its peephole) and through step t+1 (its cell update and
its i and f peepholes), so

    da_o = dh_t * tanh(c_t) * o (1 - o)
    dc_t = dc_{t+1 path} + dh_t * o * (1 - tanh^2 c_t) + da_o * w_co
    dc_{t-1 path} = dc_t * f + da_i * w_ci + da_f * w_cf

Each peephole weight's gradient is a sum over the chunk of its gate's da times the cell
state it saw (``peephole_weight_grads``).
"""
from .jit import kernel

from .activations import one_like, sigmoid, tanh
from .blas import recurrent_backward, recurrent_forward


@kernel
def peephole_step(gates, xproj, w_ci, w_cf, w_co, c_prev, c, h, tanh_c):
    """Turn one step's gate pre-activations into the new state, in place.

    Parameters
    ----------
    gates : [B, 4H] on entry ``h_prev @ weight_hh.T``; on exit the activated gates.
    xproj : [B, 4H] this step's input projection including both biases.
    w_ci, w_cf, w_co : [H] the peephole weights of the input, forget and output gates.
    c_prev : [B, H] previous cell state.
    c, h, tanh_c : [B, H] outputs: new cell state, new hidden state, tanh(c).
    """
    B, H = c.shape
    for b in range(B):
        # One 1-D view per gate so that LLVM vectorises the loop over j (see lstm.py).
        gi, gf, gg, go = gates[b, :H], gates[b, H:2 * H], gates[b, 2 * H:3 * H], gates[b, 3 * H:]
        xi, xf, xg, xo = xproj[b, :H], xproj[b, H:2 * H], xproj[b, 2 * H:3 * H], xproj[b, 3 * H:]
        cp, cn, hn, tn = c_prev[b], c[b], h[b], tanh_c[b]
        for j in range(H):
            c_old = cp[j]
            i = sigmoid(gi[j] + xi[j] + w_ci[j] * c_old)
            f = sigmoid(gf[j] + xf[j] + w_cf[j] * c_old)
            g = tanh(gg[j] + xg[j])
            c_new = f * c_old + i * g
            o = sigmoid(go[j] + xo[j] + w_co[j] * c_new)
            gi[j] = i
            gf[j] = f
            gg[j] = g
            go[j] = o
            tc = tanh(c_new)
            cn[j] = c_new
            tn[j] = tc
            hn[j] = o * tc


@kernel
def peephole_forward(xproj, weight_hh, w_ci, w_cf, w_co, h0, c0, hs, cs, gates, tanh_cs,
                     layout=0):
    """Run the peephole LSTM recurrence over a chunk.

    Parameters
    ----------
    xproj : [T, B, 4H] input projections with both biases added.
    weight_hh : [4H, H] recurrent weights (PyTorch layout), or the copy that ``layout``
        names (blas.STEP_LAYOUTS; see blas.recurrent_forward).
    w_ci, w_cf, w_co : [H] peephole weights (input, forget, output gate).
    h0, c0 : [B, H] state before the first step.
    hs, cs, tanh_cs : [T, B, H] outputs: hidden states, cell states, tanh(cell states).
    gates : [T, B, 4H] output: activated gates (i, f, g, o), kept for the backward pass.
    """
    T = xproj.shape[0]
    for t in range(T):
        if t == 0:
            recurrent_forward(h0, weight_hh, gates[0], layout)
            peephole_step(gates[0], xproj[0], w_ci, w_cf, w_co, c0, cs[0], hs[0], tanh_cs[0])
        else:
            recurrent_forward(hs[t - 1], weight_hh, gates[t], layout)
            peephole_step(gates[t], xproj[t], w_ci, w_cf, w_co, cs[t - 1], cs[t], hs[t],
                          tanh_cs[t])


@kernel
def peephole_backward(weight_hh, w_ci, w_cf, w_co, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre,
                      layout=0):
    """Backpropagate through the chunk that ``peephole_forward`` ran.

    Parameters
    ----------
    weight_hh : [4H, H] recurrent weights, or the copy that ``layout`` names.
    w_ci, w_cf, w_co : [H] peephole weights (input, forget, output gate).
    c0 : [B, H] cell state before the first step.
    cs, tanh_cs : [T, B, H], gates : [T, B, 4H]: what the forward pass saved.
    dhs : [T, B, H] gradient of the loss with respect to each output h_t coming from
        above (the decoder or the next layer), not counting the recurrence.
    dh, dc : [B, H] on entry the gradient with respect to the final h_T and c_T (zero
        under truncated BPTT); on exit the gradient with respect to h0 and c0.
    dpre : [T, B, 4H] output: gradient with respect to the gate pre-activations a, from
        which the caller forms every weight and bias gradient with one GEMM each, and
        the peephole weights' with ``peephole_weight_grads``.
    """
    T, B, H = cs.shape
    one = one_like(cs)
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        dp = dpre[t]
        for b in range(B):
            gt = gates[t, b]
            i_, f_, g_, o_ = gt[:H], gt[H:2 * H], gt[2 * H:3 * H], gt[3 * H:]
            dpi, dpf, dpg, dpo = dp[b, :H], dp[b, H:2 * H], dp[b, 2 * H:3 * H], dp[b, 3 * H:]
            tcr, cpr, dhr, dcr, dhsr = tanh_cs[t, b], c_prev[b], dh[b], dc[b], dhs[t, b]
            for j in range(H):
                i = i_[j]
                f = f_[j]
                g = g_[j]
                o = o_[j]
                tc = tcr[j]
                dh_t = dhr[j] + dhsr[j]
                da_o = dh_t * tc * o * (one - o)
                dc_t = dcr[j] + dh_t * o * (one - tc * tc) + da_o * w_co[j]
                da_i = dc_t * g * i * (one - i)
                da_f = dc_t * cpr[j] * f * (one - f)
                dpi[j] = da_i
                dpf[j] = da_f
                dpg[j] = dc_t * i * (one - g * g)
                dpo[j] = da_o
                dcr[j] = dc_t * f + da_i * w_ci[j] + da_f * w_cf[j]
        # dh_{t-1} = dpre_t @ weight_hh (the recurrent part; dhs[t-1] joins next step).
        recurrent_backward(dp, weight_hh, dh, layout)


@kernel
def peephole_weight_grads(c0, cs, dpre, d_ci, d_cf, d_co):
    """The peephole weights' gradients over a chunk: each gate's pre-activation gradient
    times the cell state its peephole saw, summed over steps and streams.

    Parameters
    ----------
    c0 : [B, H] cell state before the first step; cs : [T, B, H] the forward's.
    dpre : [T, B, 4H] what ``peephole_backward`` wrote.
    d_ci, d_cf, d_co : [H] outputs (overwritten): d_ci = sum da_i * c_{t-1},
        d_cf = sum da_f * c_{t-1}, d_co = sum da_o * c_t.
    """
    T, B, H = cs.shape
    d_ci[:] = 0.0
    d_cf[:] = 0.0
    d_co[:] = 0.0
    for t in range(T):
        c_prev = c0 if t == 0 else cs[t - 1]
        for b in range(B):
            dp = dpre[t, b]
            dpi, dpf, dpo = dp[:H], dp[H:2 * H], dp[3 * H:]
            cpr, cnr = c_prev[b], cs[t, b]
            for j in range(H):
                d_ci[j] += dpi[j] * cpr[j]
                d_cf[j] += dpf[j] * cpr[j]
                d_co[j] += dpo[j] * cnr[j]


# -- the cell's Python side: what model/network.py calls for one layer of a chunk ------
# ``ws`` is the network's Workspace: per layer k, ws.hs[k] and the buffers LAYER_BUFFERS
# names ([T, B, width * H] each, by width); SHARED_BUFFERS are one per workspace, reused
# by each layer in turn, by (shape, width): "steps" [T, B, width * H], "rows" [B, width * H].

LAYER_BUFFERS = {"cs": 1, "tanh_cs": 1, "gates": 4}
SHARED_BUFFERS = {}


def layer_forward(ws, k, xproj, weight_hh, layout, bias_hh, peepholes):
    peephole_forward(xproj, weight_hh, *peepholes, ws.h0[k], ws.c0[k], ws.hs[k], ws.cs[k],
                     ws.gates[k], ws.tanh_cs[k], layout)


def layer_backward(ws, k, weight_hh, layout, dh, dc, dpre, peepholes, peephole_grads):
    """Fills dpre and adds to the peephole weights' gradients; returns the gradient of
    the recurrent product h W_hh^T + b_hh."""
    peephole_backward(weight_hh, *peepholes, ws.c0[k], ws.cs[k], ws.gates[k], ws.tanh_cs[k],
                      ws.dhs, dh, dc, dpre, layout)
    peephole_weight_grads(ws.c0[k], ws.cs[k], dpre, *peephole_grads)
    return dpre
