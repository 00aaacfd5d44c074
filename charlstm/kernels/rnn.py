"""Vanilla tanh RNN layer: forward over a chunk beside its backward twin.

h_t = tanh(x_t @ weight_ih.T + bias_ih + h_{t-1} @ weight_hh.T + bias_hh), PyTorch's
``nn.RNN`` with ``nonlinearity='tanh'``. The input projection is precomputed for all T
steps; the kernels run the recurrence.
"""
from .jit import kernel

from .activations import one_like, tanh
from .blas import recurrent_backward, recurrent_forward


@kernel
def rnn_step(pre, xproj, h):
    """h = tanh(pre + xproj) for one step; ``pre`` holds ``h_prev @ weight_hh.T``."""
    B, H = h.shape
    for b in range(B):
        pr, xr, hr = pre[b], xproj[b], h[b]
        for j in range(H):
            hr[j] = tanh(pr[j] + xr[j])


@kernel
def rnn_forward(xproj, weight_hh, h0, hs, scratch, layout=0):
    """Run the recurrence over a chunk.

    Parameters
    ----------
    xproj : [T, B, H] input projections with both biases added.
    weight_hh : [H, H] recurrent weights, or the copy that ``layout`` names (see
        blas.recurrent_forward).
    h0 : [B, H] state before the first step.
    hs : [T, B, H] output: hidden states.
    scratch : [B, H] workspace for the recurrent product.
    """
    T = xproj.shape[0]
    for t in range(T):
        if t == 0:
            recurrent_forward(h0, weight_hh, scratch, layout)
        else:
            recurrent_forward(hs[t - 1], weight_hh, scratch, layout)
        rnn_step(scratch, xproj[t], hs[t])


@kernel
def rnn_backward(weight_hh, hs, dhs, dh, dpre, layout=0):
    """Backpropagate through the chunk that ``rnn_forward`` ran.

    Parameters
    ----------
    weight_hh : [H, H], or the copy that ``layout`` names; hs : [T, B, H] saved
        hidden states.
    dhs : [T, B, H] gradient with respect to each h_t from above.
    dh : [B, H] on entry the gradient with respect to h_T (zero under truncated BPTT);
        on exit the gradient with respect to h0.
    dpre : [T, B, H] output: gradient with respect to the pre-activations.
    """
    T, B, H = hs.shape
    one = one_like(hs)
    for t in range(T - 1, -1, -1):
        dp = dpre[t]
        for b in range(B):
            hr, dpr, dhr, dhsr = hs[t, b], dp[b], dh[b], dhs[t, b]
            for j in range(H):
                h = hr[j]
                dpr[j] = (dhr[j] + dhsr[j]) * (one - h * h)
        recurrent_backward(dp, weight_hh, dh, layout)


# -- the cell's Python side: what model/network.py calls for one layer of a chunk ------
# ``ws`` is the network's Workspace: per layer k, ws.hs[k] and the buffers LAYER_BUFFERS
# names ([T, B, width * H] each, by width); SHARED_BUFFERS are one per workspace, reused
# by each layer in turn, by (shape, width): "steps" [T, B, width * H], "rows" [B, width * H].

LAYER_BUFFERS = {}
SHARED_BUFFERS = {"scratch": ("rows", 1)}


def layer_forward(ws, k, xproj, weight_hh, layout, bias_hh, peepholes):
    rnn_forward(xproj, weight_hh, ws.h0[k], ws.hs[k], ws.scratch, layout)


def layer_backward(ws, k, weight_hh, layout, dh, dc, dpre, peepholes, peephole_grads):
    """Fills dpre; returns the gradient of the recurrent product h W_hh^T + b_hh."""
    rnn_backward(weight_hh, ws.hs[k], ws.dhs, dh, dpre, layout)
    return dpre
