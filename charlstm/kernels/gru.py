"""GRU layer: forward over a chunk beside its backward twin.

PyTorch's ``nn.GRU`` formulation, gate order (r, z, n): rows [0:H) of the [3H, .]
weights are the reset gate, [H:2H) the update gate, [2H:3H) the candidate::

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h

Unlike the LSTM and the RNN, the two biases cannot be summed for the candidate: b_hn
sits inside ``r * (...)``. So the input projection computed before the kernel is called
(``x_t @ weight_ih.T`` for all T steps at once) carries all of bias_ih but only the r and
z rows of bias_hh; the kernels add bias_hh's n rows (``bias_hn``) to the recurrent product
themselves. For the same reason the backward returns two gradients: ``dpre`` with respect
to the input projection (gives weight_ih, bias_ih and the input's gradient) and ``drec``
with respect to the recurrent product ``h W_hh^T + b_hh`` (gives weight_hh and bias_hh).
They agree on the r and z rows and differ by the factor r on the n rows.
"""
from .jit import kernel

from .activations import one_like, sigmoid, tanh
from .blas import recurrent_backward, recurrent_forward


@kernel
def gru_step(gates, xproj, bias_hn, h_prev, h, ghn):
    """Turn one step's pre-activations into the new hidden state.

    ``h`` may be the same array as ``h_prev`` (the sampler updates its state in place):
    each element of ``h_prev`` is read before the same element of ``h`` is written.

    Parameters
    ----------
    gates : [B, 3H] on entry ``h_prev @ weight_hh.T`` (no bias); on exit the activated
        gates (r, z, n).
    xproj : [B, 3H] this step's input projection with bias_ih and the r, z rows of
        bias_hh added.
    bias_hn : [H] the n rows of bias_hh.
    h_prev : [B, H] previous hidden state.
    h : [B, H] output: the new hidden state.
    ghn : [B, H] output: ``h_prev @ W_hn.T + b_hn``, the part that r scales, kept for
        the backward pass (it is the gradient of n's pre-activation with respect to r).
    """
    B, H = h.shape
    one = one_like(h)
    for b in range(B):
        # One 1-D view per gate so that LLVM vectorises the loop over j (see lstm.py).
        gr, gz, gn = gates[b, :H], gates[b, H:2 * H], gates[b, 2 * H:]
        xr, xz, xn = xproj[b, :H], xproj[b, H:2 * H], xproj[b, 2 * H:]
        hp, hn, gh = h_prev[b], h[b], ghn[b]
        for j in range(H):
            r = sigmoid(gr[j] + xr[j])
            z = sigmoid(gz[j] + xz[j])
            a = gn[j] + bias_hn[j]
            n = tanh(xn[j] + r * a)
            gr[j] = r
            gz[j] = z
            gn[j] = n
            gh[j] = a
            hn[j] = (one - z) * n + z * hp[j]


@kernel
def gru_forward(xproj, weight_hh, bias_hn, h0, hs, gates, ghns, layout=0):
    """Run the GRU recurrence over a chunk.

    Parameters
    ----------
    xproj : [T, B, 3H] input projections with bias_ih and the r, z rows of bias_hh.
    weight_hh : [3H, H] recurrent weights (PyTorch layout), or the copy that ``layout``
        names (blas.STEP_LAYOUTS; see blas.recurrent_forward).
    bias_hn : [H] the n rows of bias_hh.
    h0 : [B, H] state before the first step.
    hs : [T, B, H] output: hidden states.
    gates : [T, B, 3H] output: activated gates (r, z, n), kept for the backward pass.
    ghns : [T, B, H] output: ``h_{t-1} @ W_hn.T + b_hn`` per step, ditto.
    """
    T = xproj.shape[0]
    for t in range(T):
        if t == 0:
            recurrent_forward(h0, weight_hh, gates[0], layout)
            gru_step(gates[0], xproj[0], bias_hn, h0, hs[0], ghns[0])
        else:
            recurrent_forward(hs[t - 1], weight_hh, gates[t], layout)
            gru_step(gates[t], xproj[t], bias_hn, hs[t - 1], hs[t], ghns[t])


@kernel
def gru_backward(weight_hh, h0, hs, gates, ghns, dhs, dh, dpre, drec, dhz, layout=0):
    """Backpropagate through the chunk that ``gru_forward`` ran.

    Parameters
    ----------
    weight_hh : [3H, H] recurrent weights, or the copy that ``layout`` names.
    h0 : [B, H] state before the first step.
    hs : [T, B, H], gates : [T, B, 3H], ghns : [T, B, H]: what the forward pass saved.
    dhs : [T, B, H] gradient of the loss with respect to each output h_t coming from
        above (the decoder or the next layer), not counting the recurrence.
    dh : [B, H] on entry the gradient with respect to the final h_T (zero under truncated
        BPTT); on exit the gradient with respect to h0.
    dpre : [T, B, 3H] output: gradient with respect to the input projection
        (``x_t W_ih^T + b_ih``), from which the caller forms weight_ih's and bias_ih's
        gradients and the gradient of the layer's input, one GEMM each.
    drec : [T, B, 3H] output: gradient with respect to the recurrent product
        (``h_{t-1} W_hh^T + b_hh``), from which the caller forms weight_hh's and bias_hh's
        gradients. Equal to ``dpre`` on the r and z rows, ``r * dpre`` on the n rows.
    dhz : [B, H] scratch.
    """
    T, B, H = hs.shape
    one = one_like(hs)
    # h_{t-1} reaches the loss two ways: through the recurrent product (the GEMM below
    # writes that part into dh) and directly through z * h_{t-1}. The direct part is
    # kept in dhz and added in the next step's elementwise pass, so that the GEMM can
    # overwrite dh and no extra pass over [B, H] is needed per step.
    dhz[:] = 0.0
    for t in range(T - 1, -1, -1):
        h_prev = h0 if t == 0 else hs[t - 1]
        dp = dpre[t]
        dq = drec[t]
        for b in range(B):
            gt = gates[t, b]
            r_, z_, n_ = gt[:H], gt[H:2 * H], gt[2 * H:]
            dpr, dpz, dpn = dp[b, :H], dp[b, H:2 * H], dp[b, 2 * H:]
            dqr, dqz, dqn = dq[b, :H], dq[b, H:2 * H], dq[b, 2 * H:]
            hpr, ghr, dhr, dzr, dhsr = h_prev[b], ghns[t, b], dh[b], dhz[b], dhs[t, b]
            for j in range(H):
                r = r_[j]
                z = z_[j]
                n = n_[j]
                hp = hpr[j]
                dh_t = dhr[j] + dzr[j] + dhsr[j]
                # h = (1 - z) n + z h_prev; n = tanh(a_n), a_n = xn + r * ghn.
                da_n = dh_t * (one - z) * (one - n * n)
                da_r = da_n * ghr[j] * r * (one - r)
                da_z = dh_t * (hp - n) * z * (one - z)
                dpr[j] = da_r
                dpz[j] = da_z
                dpn[j] = da_n
                dqr[j] = da_r
                dqz[j] = da_z
                dqn[j] = da_n * r
                dzr[j] = dh_t * z
        # dh_{t-1} = drec_t @ weight_hh (+ dhz, added in the next step's pass).
        recurrent_backward(dq, weight_hh, dh, layout)
    dh += dhz


# -- the cell's Python side: what model/network.py calls for one layer of a chunk ------
# ``ws`` is the network's Workspace: per layer k, ws.hs[k] and the buffers LAYER_BUFFERS
# names ([T, B, width * H] each, by width); SHARED_BUFFERS are one per workspace, reused
# by each layer in turn, by (shape, width): "steps" [T, B, width * H], "rows" [B, width * H].

# ghns: h_{t-1} W_hn^T + b_hn per step, what r scales, needed by the backward. drec: the
# gradient of the recurrent product h W_hh^T + b_hh, one layer at a time.
LAYER_BUFFERS = {"gates": 3, "ghns": 1}
SHARED_BUFFERS = {"drec": ("steps", 3), "scratch": ("rows", 1)}


def layer_forward(ws, k, xproj, weight_hh, layout, bias_hh, peepholes):
    H = ws.hs[k].shape[2]
    gru_forward(xproj, weight_hh, bias_hh[2 * H:], ws.h0[k], ws.hs[k], ws.gates[k], ws.ghns[k],
                layout)


def layer_backward(ws, k, weight_hh, layout, dh, dc, dpre, peepholes, peephole_grads):
    """Fills dpre; returns the gradient of the recurrent product h W_hh^T + b_hh, which
    differs from dpre in the candidate rows (scaled by r on the recurrent side)."""
    gru_backward(weight_hh, ws.h0[k], ws.hs[k], ws.gates[k], ws.ghns[k], ws.dhs, dh, dpre,
                 ws.drec, ws.scratch, layout)
    return ws.drec
