"""LSTM with coupled input and forget gates (CIFG): forward over a chunk beside its
backward twin.

Greff, Srivastava, Koutnik, Steunebrink & Schmidhuber (2017), "LSTM: A Search Space
Odyssey", IEEE TNNLS 28(10), variant CIFG: the forget gate is not computed but tied to
the input gate, f = 1 - i, so new content enters the cell only as old content leaves it.
A layer has three gate blocks instead of four; charlstm keeps PyTorch's LSTM order with
the forget block left out, (i, g, o): rows [0:H) of the [3H, .] weights are the input
gate, [H:2H) the candidate, [2H:3H) the output gate::

    i = sigmoid(a_i);  g = tanh(a_g);  o = sigmoid(a_o)
    c_t = (1 - i) * c_{t-1} + i * g
    h_t = o * tanh(c_t)

with a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh. This is the CIFG of charlstm's LSTM,
which has no peepholes (Greff et al.'s baseline LSTM has them). The input projection is
computed for all T steps before the kernel is called, as for the LSTM.

Backward, per step: dc_t = dc_{t+1 path} + dh_t * o * (1 - tanh^2 c_t);
da_i = dc_t * (g - c_{t-1}) * i (1 - i), since i moves c_t by g - c_{t-1};
dc_{t-1 path} = dc_t * (1 - i).
"""
from .jit import kernel

from .activations import one_like, sigmoid, tanh
from .blas import recurrent_backward, recurrent_forward


@kernel
def cifg_step(gates, xproj, c_prev, c, h, tanh_c):
    """Turn one step's gate pre-activations into the new state, in place.

    Parameters
    ----------
    gates : [B, 3H] on entry ``h_prev @ weight_hh.T``; on exit the activated gates
        (i, g, o).
    xproj : [B, 3H] this step's input projection including both biases.
    c_prev : [B, H] previous cell state.
    c, h, tanh_c : [B, H] outputs: new cell state, new hidden state, tanh(c).
    """
    B, H = c.shape
    one = one_like(c)
    for b in range(B):
        # One 1-D view per gate so that LLVM vectorises the loop over j (see lstm.py).
        gi, gg, go = gates[b, :H], gates[b, H:2 * H], gates[b, 2 * H:]
        xi, xg, xo = xproj[b, :H], xproj[b, H:2 * H], xproj[b, 2 * H:]
        cp, cn, hn, tn = c_prev[b], c[b], h[b], tanh_c[b]
        for j in range(H):
            i = sigmoid(gi[j] + xi[j])
            g = tanh(gg[j] + xg[j])
            o = sigmoid(go[j] + xo[j])
            gi[j] = i
            gg[j] = g
            go[j] = o
            c_new = (one - i) * cp[j] + i * g
            tc = tanh(c_new)
            cn[j] = c_new
            tn[j] = tc
            hn[j] = o * tc


@kernel
def cifg_forward(xproj, weight_hh, h0, c0, hs, cs, gates, tanh_cs, layout=0):
    """Run the CIFG recurrence over a chunk.

    Parameters
    ----------
    xproj : [T, B, 3H] input projections with both biases added.
    weight_hh : [3H, H] recurrent weights (PyTorch's row layout, blocks i, g, o), or the
        copy that ``layout`` names (blas.STEP_LAYOUTS; see blas.recurrent_forward).
    h0, c0 : [B, H] state before the first step.
    hs, cs, tanh_cs : [T, B, H] outputs: hidden states, cell states, tanh(cell states).
    gates : [T, B, 3H] output: activated gates (i, g, o), kept for the backward pass.
    """
    T = xproj.shape[0]
    for t in range(T):
        if t == 0:
            recurrent_forward(h0, weight_hh, gates[0], layout)
            cifg_step(gates[0], xproj[0], c0, cs[0], hs[0], tanh_cs[0])
        else:
            recurrent_forward(hs[t - 1], weight_hh, gates[t], layout)
            cifg_step(gates[t], xproj[t], cs[t - 1], cs[t], hs[t], tanh_cs[t])


@kernel
def cifg_backward(weight_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre, layout=0):
    """Backpropagate through the chunk that ``cifg_forward`` ran.

    Parameters
    ----------
    weight_hh : [3H, H] recurrent weights, or the copy that ``layout`` names.
    c0 : [B, H] cell state before the first step.
    cs, tanh_cs : [T, B, H], gates : [T, B, 3H]: what the forward pass saved.
    dhs : [T, B, H] gradient of the loss with respect to each output h_t coming from
        above (the decoder or the next layer), not counting the recurrence.
    dh, dc : [B, H] on entry the gradient with respect to the final h_T and c_T (zero
        under truncated BPTT); on exit the gradient with respect to h0 and c0.
    dpre : [T, B, 3H] output: gradient with respect to the gate pre-activations, from
        which the caller forms every weight and bias gradient with one GEMM each.
    """
    T, B, H = cs.shape
    one = one_like(cs)
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        dp = dpre[t]
        for b in range(B):
            gt = gates[t, b]
            i_, g_, o_ = gt[:H], gt[H:2 * H], gt[2 * H:]
            dpi, dpg, dpo = dp[b, :H], dp[b, H:2 * H], dp[b, 2 * H:]
            tcr, cpr, dhr, dcr, dhsr = tanh_cs[t, b], c_prev[b], dh[b], dc[b], dhs[t, b]
            for j in range(H):
                i = i_[j]
                g = g_[j]
                o = o_[j]
                tc = tcr[j]
                dh_t = dhr[j] + dhsr[j]
                dc_t = dcr[j] + dh_t * o * (one - tc * tc)
                dpi[j] = dc_t * (g - cpr[j]) * i * (one - i)
                dpg[j] = dc_t * i * (one - g * g)
                dpo[j] = dh_t * tc * o * (one - o)
                dcr[j] = dc_t * (one - i)
        # dh_{t-1} = dpre_t @ weight_hh (the recurrent part; dhs[t-1] joins next step).
        recurrent_backward(dp, weight_hh, dh, layout)


# -- the cell's Python side: what model/network.py calls for one layer of a chunk ------
# ``ws`` is the network's Workspace: per layer k, ws.hs[k] and the buffers LAYER_BUFFERS
# names ([T, B, width * H] each, by width); SHARED_BUFFERS are one per workspace, reused
# by each layer in turn, by (shape, width): "steps" [T, B, width * H], "rows" [B, width * H].

LAYER_BUFFERS = {"cs": 1, "tanh_cs": 1, "gates": 3}
SHARED_BUFFERS = {}


def layer_forward(ws, k, xproj, weight_hh, layout, bias_hh, peepholes):
    cifg_forward(xproj, weight_hh, ws.h0[k], ws.c0[k], ws.hs[k], ws.cs[k], ws.gates[k],
                 ws.tanh_cs[k], layout)


def layer_backward(ws, k, weight_hh, layout, dh, dc, dpre, peepholes, peephole_grads):
    """Fills dpre; returns the gradient of the recurrent product h W_hh^T + b_hh."""
    cifg_backward(weight_hh, ws.c0[k], ws.cs[k], ws.gates[k], ws.tanh_cs[k], ws.dhs, dh, dc,
                  dpre, layout)
    return dpre
