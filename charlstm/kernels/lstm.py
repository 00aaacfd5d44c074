"""LSTM layer: forward over a chunk beside its backward twin.

Gate order is PyTorch's (i, f, g, o): rows [0:H) of the gate pre-activations are the
input gate, [H:2H) the forget gate, [2H:3H) the candidate, [3H:4H) the output gate.

The input projection of every time step (``x_t @ weight_ih.T + bias_ih + bias_hh``) is
computed before the kernel is called, for all T steps at once; the kernels only run the
recurrence, one GEMM per step, with the elementwise gate math fused into one pass.
"""
from .jit import kernel

from .activations import one_like, sigmoid, tanh
from .blas import recurrent_backward, recurrent_forward


@kernel
def lstm_step(gates, xproj, c_prev, c, h, tanh_c):
    """Turn one step's gate pre-activations into the new state, in place.

    Parameters
    ----------
    gates : [B, 4H] on entry ``h_prev @ weight_hh.T``; on exit the activated gates.
    xproj : [B, 4H] this step's input projection including both biases.
    c_prev : [B, H] previous cell state.
    c, h, tanh_c : [B, H] outputs: new cell state, new hidden state, tanh(c).
    """
    B, H = c.shape
    for b in range(B):
        # One 1-D view per gate: with them LLVM vectorises the loop over j (indexing
        # gates[b, k*H + j] directly measured 5x slower).
        gi, gf, gg, go = gates[b, :H], gates[b, H:2 * H], gates[b, 2 * H:3 * H], gates[b, 3 * H:]
        xi, xf, xg, xo = xproj[b, :H], xproj[b, H:2 * H], xproj[b, 2 * H:3 * H], xproj[b, 3 * H:]
        cp, cn, hn, tn = c_prev[b], c[b], h[b], tanh_c[b]
        for j in range(H):
            i = sigmoid(gi[j] + xi[j])
            f = sigmoid(gf[j] + xf[j])
            g = tanh(gg[j] + xg[j])
            o = sigmoid(go[j] + xo[j])
            gi[j] = i
            gf[j] = f
            gg[j] = g
            go[j] = o
            c_new = f * cp[j] + i * g
            tc = tanh(c_new)
            cn[j] = c_new
            tn[j] = tc
            hn[j] = o * tc


@kernel
def lstm_forward(xproj, weight_hh, h0, c0, hs, cs, gates, tanh_cs, layout=0):
    """Run the LSTM recurrence over a chunk.

    Parameters
    ----------
    xproj : [T, B, 4H] input projections with both biases added.
    weight_hh : [4H, H] recurrent weights (PyTorch layout), or the copy that ``layout``
        names (blas.STEP_LAYOUTS; see blas.recurrent_forward).
    h0, c0 : [B, H] state before the first step.
    hs, cs, tanh_cs : [T, B, H] outputs: hidden states, cell states, tanh(cell states).
    gates : [T, B, 4H] output: activated gates (i, f, g, o), kept for the backward pass.
    """
    T = xproj.shape[0]
    for t in range(T):
        if t == 0:
            recurrent_forward(h0, weight_hh, gates[0], layout)
            lstm_step(gates[0], xproj[0], c0, cs[0], hs[0], tanh_cs[0])
        else:
            recurrent_forward(hs[t - 1], weight_hh, gates[t], layout)
            lstm_step(gates[t], xproj[t], cs[t - 1], cs[t], hs[t], tanh_cs[t])


@kernel
def lstm_backward(weight_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre, layout=0):
    """Backpropagate through the chunk that ``lstm_forward`` ran.

    Parameters
    ----------
    weight_hh : [4H, H] recurrent weights, or the copy that ``layout`` names.
    c0 : [B, H] cell state before the first step.
    cs, tanh_cs : [T, B, H], gates : [T, B, 4H]: what the forward pass saved.
    dhs : [T, B, H] gradient of the loss with respect to each output h_t coming from
        above (the decoder or the next layer), not counting the recurrence.
    dh, dc : [B, H] on entry the gradient with respect to the final h_T and c_T (zero
        under truncated BPTT); on exit the gradient with respect to h0 and c0.
    dpre : [T, B, 4H] output: gradient with respect to the gate pre-activations, from
        which the caller forms every weight and bias gradient with one GEMM each.
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
                dc_t = dcr[j] + dh_t * o * (one - tc * tc)
                dpi[j] = dc_t * g * i * (one - i)
                dpf[j] = dc_t * cpr[j] * f * (one - f)
                dpg[j] = dc_t * i * (one - g * g)
                dpo[j] = dh_t * tc * o * (one - o)
                dcr[j] = dc_t * f
        # dh_{t-1} = dpre_t @ weight_hh (the recurrent part; dhs[t-1] joins next step).
        recurrent_backward(dp, weight_hh, dh, layout)


# -- the cell's Python side: what model/network.py calls for one layer of a chunk ------
# ``ws`` is the network's Workspace: per layer k, ws.hs[k] and the buffers LAYER_BUFFERS
# names ([T, B, width * H] each, by width); SHARED_BUFFERS are one per workspace, reused
# by each layer in turn, by (shape, width): "steps" [T, B, width * H], "rows" [B, width * H].

LAYER_BUFFERS = {"cs": 1, "tanh_cs": 1, "gates": 4}
SHARED_BUFFERS = {}


def layer_forward(ws, k, xproj, weight_hh, layout, bias_hh, peepholes):
    lstm_forward(xproj, weight_hh, ws.h0[k], ws.c0[k], ws.hs[k], ws.cs[k], ws.gates[k],
                 ws.tanh_cs[k], layout)


def layer_backward(ws, k, weight_hh, layout, dh, dc, dpre, peepholes, peephole_grads):
    """Fills dpre; returns the gradient of the recurrent product h W_hh^T + b_hh."""
    lstm_backward(weight_hh, ws.c0[k], ws.cs[k], ws.gates[k], ws.tanh_cs[k], ws.dhs, dh, dc,
                  dpre, layout)
    return dpre
