"""Plain NumPy reference twins of charlstm's kernels and network, for the tests.

Everything here is float64, loops over time in Python and is written straight from the
math (PyTorch's ``nn.LSTM`` / ``nn.RNN(nonlinearity='tanh')`` / ``nn.GRU``, the peephole
LSTM of Gers, Schraudolph & Schmidhuber 2002 and the CIFG of Greff et al. 2017, plus an
``nn.Linear`` decoder), with no tricks: layer 0's input is an explicit one-hot matrix multiplied by
``weight_ih`` (no row gather), biases are added separately, the softmax is an explicit
log-sum-exp. The backward passes are derived by hand from the chain rule, one step at a
time. Nothing is imported from ``charlstm.kernels`` or ``charlstm.model.network``.

Shapes: time-major inside a layer (``x`` is [T, B, D], ``hs`` is [T, B, H]); the model
level takes ``inputs``/``targets`` as [B, T] integer arrays like ``Network`` does.

LSTM (gate order i, f, g, o, rows [kH:(k+1)H) of the [4H, .] weights):
    pre_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    i, f, o = sigmoid(pre_i), sigmoid(pre_f), sigmoid(pre_o);  g = tanh(pre_g)
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)
RNN:
    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
Peephole LSTM (gate order i, f, g, o; diagonal weights w_ci, w_cf, w_co [H]):
    pre_t as for the LSTM
    i = sigmoid(pre_i + w_ci * c_{t-1});  f = sigmoid(pre_f + w_cf * c_{t-1})
    g = tanh(pre_g);  c_t = f * c_{t-1} + i * g
    o = sigmoid(pre_o + w_co * c_t);  h_t = o * tanh(c_t)
CIFG (gate order i, g, o, rows [kH:(k+1)H) of the [3H, .] weights):
    pre_t as for the LSTM;  i, o = sigmoid(pre_i), sigmoid(pre_o);  g = tanh(pre_g)
    c_t = (1 - i) * c_{t-1} + i * g;   h_t = o * tanh(c_t)
GRU (gate order r, z, n, rows [kH:(k+1)H) of the [3H, .] weights):
    gi_t = x_t W_ih^T + b_ih;   gh_t = h_{t-1} W_hh^T + b_hh
    r, z = sigmoid(gi_r + gh_r), sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n);   h_t = (1 - z) * n + z * h_{t-1}
Decoder and loss:
    logits = h_top W_dec^T + b_dec;  loss = mean over the B*T positions of
    -log softmax(logits)[target]  (natural log)
"""
from __future__ import annotations

import numpy as np

F64 = np.float64


# --------------------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------------------
def sigmoid(x):
    """Logistic function; the tanh form never overflows."""
    x = np.asarray(x, F64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def onehot(ids, V):
    """[...] integer ids -> [..., V] float64 one-hot rows."""
    ids = np.asarray(ids)
    out = np.zeros(ids.shape + (V,), F64)
    np.put_along_axis(out, ids[..., None].astype(np.intp), 1.0, axis=-1)
    return out


def matmul(a, b):
    """The plain float64 product: what every layer multiplies with by default."""
    return np.asarray(a, F64) @ np.asarray(b, F64)


def bf16_round(x):
    """``x`` rounded to float32, then to the nearest bfloat16 (ties to even), as float64:
    the value a bfloat16 operand carries. Written from the definition on the bit pattern
    (the top 16 bits of a float32), independently of charlstm's kernels. NaN stays NaN."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).astype(F64)
    return np.where(np.isnan(np.asarray(x, F64)), np.nan, out)


def bf16_matmul(a, b):
    """The twin of a bfloat16 product (kernels/bf16.py): both operands rounded to
    bfloat16, the product taken in float64."""
    return bf16_round(a) @ bf16_round(b)


# --------------------------------------------------------------------------------------
# one-hot projection (the twin of kernels/onehot.py)
# --------------------------------------------------------------------------------------
def onehot_forward_ref(table, ids):
    """out[n] = onehot(ids[n]) @ table, as a real matrix product."""
    table = np.asarray(table, F64)
    return onehot(ids, table.shape[0]) @ table


def onehot_backward_ref(dout, ids, V):
    """d table = onehot(ids)^T @ dout: the transpose of the forward's linear map."""
    return onehot(ids, V).T @ np.asarray(dout, F64)


# --------------------------------------------------------------------------------------
# softmax cross-entropy (the twin of kernels/softmax.py)
# --------------------------------------------------------------------------------------
def log_softmax(logits):
    logits = np.asarray(logits, F64)
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_xent_ref(logits, targets):
    """(summed loss, d summed loss / d logits) for logits [N, V], targets [N]."""
    logits = np.asarray(logits, F64)
    N, V = logits.shape
    logp = log_softmax(logits)
    loss = -logp[np.arange(N), np.asarray(targets)].sum()
    grad = np.exp(logp) - onehot(targets, V)
    return float(loss), grad


# --------------------------------------------------------------------------------------
# LSTM layer
# --------------------------------------------------------------------------------------
def lstm_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, c0, mm=matmul, mm_in=matmul):
    """x [T, B, D] -> dict with hs, cs, tanh_cs [T, B, H], gates [T, B, 4H] (activated,
    order i, f, g, o) and everything the backward pass needs."""
    x = np.asarray(x, F64)
    T = x.shape[0]
    H = W_hh.shape[1]
    h = np.asarray(h0, F64).copy()
    c = np.asarray(c0, F64).copy()
    hs, cs, tanh_cs, gates, h_prevs, c_prevs = [], [], [], [], [], []
    for t in range(T):
        pre = mm_in(x[t], W_ih.T) + b_ih + mm(h, W_hh.T) + b_hh
        i = sigmoid(pre[:, 0 * H:1 * H])
        f = sigmoid(pre[:, 1 * H:2 * H])
        g = np.tanh(pre[:, 2 * H:3 * H])
        o = sigmoid(pre[:, 3 * H:4 * H])
        h_prevs.append(h)
        c_prevs.append(c)
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs.append(h)
        cs.append(c)
        tanh_cs.append(tc)
        gates.append(np.concatenate([i, f, g, o], axis=1))
    return {
        "x": x, "W_ih": np.asarray(W_ih, F64), "W_hh": np.asarray(W_hh, F64), "mm": mm, "mm_in": mm_in,
        "hs": np.array(hs), "cs": np.array(cs), "tanh_cs": np.array(tanh_cs),
        "gates": np.array(gates), "h_prev": np.array(h_prevs), "c_prev": np.array(c_prevs),
    }


def lstm_layer_backward(fwd, dhs, dhT=None, dcT=None):
    """Backward through ``lstm_layer_forward``.

    dhs [T, B, H] is dLoss/dh_t from above (not counting the recurrence); dhT, dcT are the
    gradients arriving at the final state (zero if None). Returns a dict with dpre
    [T, B, 4H] (w.r.t. the gate pre-activations), dx, dW_ih, dW_hh, db_ih, db_hh, dh0, dc0.
    """
    x, W_ih, W_hh = fwd["x"], fwd["W_ih"], fwd["W_hh"]
    mm, mm_in = fwd["mm"], fwd["mm_in"]
    T, B, H = fwd["hs"].shape
    dh_next = np.zeros((B, H)) if dhT is None else np.asarray(dhT, F64).copy()
    dc_next = np.zeros((B, H)) if dcT is None else np.asarray(dcT, F64).copy()
    dpre = np.zeros((T, B, 4 * H))
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros(4 * H)
    for t in range(T - 1, -1, -1):
        gt = fwd["gates"][t]
        i, f, g, o = (gt[:, k * H:(k + 1) * H] for k in range(4))
        tc = fwd["tanh_cs"][t]
        c_prev = fwd["c_prev"][t]
        h_prev = fwd["h_prev"][t]
        dh = dhs[t] + dh_next                       # h_t feeds the layer above and step t+1
        # h_t = o * tanh(c_t)
        do = dh * tc
        dc = dc_next + dh * o * (1.0 - tc ** 2)     # c_t feeds h_t and c_{t+1}
        # c_t = f * c_{t-1} + i * g
        di = dc * g
        df = dc * c_prev
        dg = dc * i
        dc_next = dc * f
        # through the activations: sigmoid' = s(1-s), tanh' = 1 - tanh^2
        dp = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f),
                             dg * (1.0 - g ** 2), do * o * (1.0 - o)], axis=1)
        dpre[t] = dp
        # pre = x W_ih^T + b_ih + h_prev W_hh^T + b_hh
        dW_ih += mm_in(dp.T, x[t])
        dW_hh += mm(dp.T, h_prev)
        db += dp.sum(axis=0)
        dx[t] = mm_in(dp, W_ih)
        dh_next = mm(dp, W_hh)
    return {"dpre": dpre, "dx": dx, "dW_ih": dW_ih, "dW_hh": dW_hh,
            "db_ih": db, "db_hh": db.copy(), "dh0": dh_next, "dc0": dc_next}


# --------------------------------------------------------------------------------------
# Peephole LSTM layer
# --------------------------------------------------------------------------------------
def peephole_layer_forward(x, W_ih, W_hh, b_ih, b_hh, w_ci, w_cf, w_co, h0, c0, mm=matmul, mm_in=matmul):
    """x [T, B, D] -> dict with hs, cs, tanh_cs [T, B, H], gates [T, B, 4H] (activated,
    order i, f, g, o) and everything the backward pass needs."""
    x = np.asarray(x, F64)
    T = x.shape[0]
    H = W_hh.shape[1]
    w_ci, w_cf, w_co = (np.asarray(w, F64) for w in (w_ci, w_cf, w_co))
    h = np.asarray(h0, F64).copy()
    c = np.asarray(c0, F64).copy()
    hs, cs, tanh_cs, gates, h_prevs, c_prevs = [], [], [], [], [], []
    for t in range(T):
        pre = mm_in(x[t], W_ih.T) + b_ih + mm(h, W_hh.T) + b_hh
        i = sigmoid(pre[:, 0 * H:1 * H] + w_ci * c)
        f = sigmoid(pre[:, 1 * H:2 * H] + w_cf * c)
        g = np.tanh(pre[:, 2 * H:3 * H])
        h_prevs.append(h)
        c_prevs.append(c)
        c = f * c + i * g
        o = sigmoid(pre[:, 3 * H:4 * H] + w_co * c)   # the output gate sees the new c
        tc = np.tanh(c)
        h = o * tc
        hs.append(h)
        cs.append(c)
        tanh_cs.append(tc)
        gates.append(np.concatenate([i, f, g, o], axis=1))
    return {
        "x": x, "W_ih": np.asarray(W_ih, F64), "W_hh": np.asarray(W_hh, F64), "mm": mm, "mm_in": mm_in,
        "w_ci": w_ci, "w_cf": w_cf, "w_co": w_co,
        "hs": np.array(hs), "cs": np.array(cs), "tanh_cs": np.array(tanh_cs),
        "gates": np.array(gates), "h_prev": np.array(h_prevs), "c_prev": np.array(c_prevs),
    }


def peephole_layer_backward(fwd, dhs, dhT=None, dcT=None):
    """Backward through ``peephole_layer_forward``; as ``lstm_layer_backward``, plus
    dw_ci, dw_cf, dw_co [H]."""
    x, W_ih, W_hh = fwd["x"], fwd["W_ih"], fwd["W_hh"]
    mm, mm_in = fwd["mm"], fwd["mm_in"]
    w_ci, w_cf, w_co = fwd["w_ci"], fwd["w_cf"], fwd["w_co"]
    T, B, H = fwd["hs"].shape
    dh_next = np.zeros((B, H)) if dhT is None else np.asarray(dhT, F64).copy()
    dc_next = np.zeros((B, H)) if dcT is None else np.asarray(dcT, F64).copy()
    dpre = np.zeros((T, B, 4 * H))
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros(4 * H)
    dw_ci, dw_cf, dw_co = np.zeros(H), np.zeros(H), np.zeros(H)
    for t in range(T - 1, -1, -1):
        gt = fwd["gates"][t]
        i, f, g, o = (gt[:, k * H:(k + 1) * H] for k in range(4))
        tc = fwd["tanh_cs"][t]
        c = fwd["cs"][t]
        c_prev = fwd["c_prev"][t]
        h_prev = fwd["h_prev"][t]
        dh = dhs[t] + dh_next                       # h_t feeds the layer above and step t+1
        # h_t = o * tanh(c_t), o = sigmoid(pre_o + w_co * c_t)
        dpre_o = dh * tc * o * (1.0 - o)
        # c_t feeds h_t directly, o_t through its peephole, and step t+1 (dc_next)
        dc = dc_next + dh * o * (1.0 - tc ** 2) + dpre_o * w_co
        # c_t = f * c_{t-1} + i * g
        dpre_i = dc * g * i * (1.0 - i)
        dpre_f = dc * c_prev * f * (1.0 - f)
        dpre_g = dc * i * (1.0 - g ** 2)
        # c_{t-1} feeds c_t and, through their peepholes, i_t and f_t
        dc_next = dc * f + dpre_i * w_ci + dpre_f * w_cf
        dw_ci += (dpre_i * c_prev).sum(axis=0)
        dw_cf += (dpre_f * c_prev).sum(axis=0)
        dw_co += (dpre_o * c).sum(axis=0)
        dp = np.concatenate([dpre_i, dpre_f, dpre_g, dpre_o], axis=1)
        dpre[t] = dp
        dW_ih += mm_in(dp.T, x[t])
        dW_hh += mm(dp.T, h_prev)
        db += dp.sum(axis=0)
        dx[t] = mm_in(dp, W_ih)
        dh_next = mm(dp, W_hh)
    return {"dpre": dpre, "dx": dx, "dW_ih": dW_ih, "dW_hh": dW_hh,
            "db_ih": db, "db_hh": db.copy(), "dw_ci": dw_ci, "dw_cf": dw_cf, "dw_co": dw_co,
            "dh0": dh_next, "dc0": dc_next}


# --------------------------------------------------------------------------------------
# CIFG layer (coupled input and forget gates)
# --------------------------------------------------------------------------------------
def cifg_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, c0, mm=matmul, mm_in=matmul):
    """x [T, B, D] -> dict with hs, cs, tanh_cs [T, B, H], gates [T, B, 3H] (activated,
    order i, g, o) and everything the backward pass needs."""
    x = np.asarray(x, F64)
    T = x.shape[0]
    H = W_hh.shape[1]
    h = np.asarray(h0, F64).copy()
    c = np.asarray(c0, F64).copy()
    hs, cs, tanh_cs, gates, h_prevs, c_prevs = [], [], [], [], [], []
    for t in range(T):
        pre = mm_in(x[t], W_ih.T) + b_ih + mm(h, W_hh.T) + b_hh
        i = sigmoid(pre[:, 0 * H:1 * H])
        g = np.tanh(pre[:, 1 * H:2 * H])
        o = sigmoid(pre[:, 2 * H:3 * H])
        f = 1.0 - i                                 # the coupling
        h_prevs.append(h)
        c_prevs.append(c)
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs.append(h)
        cs.append(c)
        tanh_cs.append(tc)
        gates.append(np.concatenate([i, g, o], axis=1))
    return {
        "x": x, "W_ih": np.asarray(W_ih, F64), "W_hh": np.asarray(W_hh, F64), "mm": mm, "mm_in": mm_in,
        "hs": np.array(hs), "cs": np.array(cs), "tanh_cs": np.array(tanh_cs),
        "gates": np.array(gates), "h_prev": np.array(h_prevs), "c_prev": np.array(c_prevs),
    }


def cifg_layer_backward(fwd, dhs, dhT=None, dcT=None):
    """Backward through ``cifg_layer_forward``; returns what ``lstm_layer_backward``
    does, with dpre [T, B, 3H]."""
    x, W_ih, W_hh = fwd["x"], fwd["W_ih"], fwd["W_hh"]
    mm, mm_in = fwd["mm"], fwd["mm_in"]
    T, B, H = fwd["hs"].shape
    dh_next = np.zeros((B, H)) if dhT is None else np.asarray(dhT, F64).copy()
    dc_next = np.zeros((B, H)) if dcT is None else np.asarray(dcT, F64).copy()
    dpre = np.zeros((T, B, 3 * H))
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros(3 * H)
    for t in range(T - 1, -1, -1):
        gt = fwd["gates"][t]
        i, g, o = (gt[:, k * H:(k + 1) * H] for k in range(3))
        tc = fwd["tanh_cs"][t]
        c_prev = fwd["c_prev"][t]
        h_prev = fwd["h_prev"][t]
        dh = dhs[t] + dh_next
        # h_t = o * tanh(c_t)
        do = dh * tc
        dc = dc_next + dh * o * (1.0 - tc ** 2)
        # c_t = (1 - i) * c_{t-1} + i * g: i appears twice, through f = 1 - i and beside g
        di = dc * g - dc * c_prev
        dg = dc * i
        dc_next = dc * (1.0 - i)
        dp = np.concatenate([di * i * (1.0 - i), dg * (1.0 - g ** 2), do * o * (1.0 - o)],
                            axis=1)
        dpre[t] = dp
        dW_ih += mm_in(dp.T, x[t])
        dW_hh += mm(dp.T, h_prev)
        db += dp.sum(axis=0)
        dx[t] = mm_in(dp, W_ih)
        dh_next = mm(dp, W_hh)
    return {"dpre": dpre, "dx": dx, "dW_ih": dW_ih, "dW_hh": dW_hh,
            "db_ih": db, "db_hh": db.copy(), "dh0": dh_next, "dc0": dc_next}


# --------------------------------------------------------------------------------------
# RNN (tanh) layer
# --------------------------------------------------------------------------------------
def rnn_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, mm=matmul, mm_in=matmul):
    """x [T, B, D] -> dict with hs [T, B, H] and what the backward pass needs."""
    x = np.asarray(x, F64)
    T = x.shape[0]
    h = np.asarray(h0, F64).copy()
    hs, h_prevs = [], []
    for t in range(T):
        h_prevs.append(h)
        h = np.tanh(mm_in(x[t], W_ih.T) + b_ih + mm(h, W_hh.T) + b_hh)
        hs.append(h)
    return {"x": x, "W_ih": np.asarray(W_ih, F64), "W_hh": np.asarray(W_hh, F64), "mm": mm, "mm_in": mm_in, "mm": mm, "mm_in": mm_in,
            "hs": np.array(hs), "h_prev": np.array(h_prevs)}


def rnn_layer_backward(fwd, dhs, dhT=None):
    """Backward through ``rnn_layer_forward``; returns dpre [T, B, H], dx, dW_ih, dW_hh,
    db_ih, db_hh, dh0."""
    x, W_ih, W_hh = fwd["x"], fwd["W_ih"], fwd["W_hh"]
    mm, mm_in = fwd["mm"], fwd["mm_in"]
    T, B, H = fwd["hs"].shape
    dh_next = np.zeros((B, H)) if dhT is None else np.asarray(dhT, F64).copy()
    dpre = np.zeros((T, B, H))
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros(H)
    for t in range(T - 1, -1, -1):
        h = fwd["hs"][t]
        dh = dhs[t] + dh_next
        dp = dh * (1.0 - h ** 2)                    # h = tanh(pre)
        dpre[t] = dp
        dW_ih += mm_in(dp.T, x[t])
        dW_hh += mm(dp.T, fwd["h_prev"][t])
        db += dp.sum(axis=0)
        dx[t] = mm_in(dp, W_ih)
        dh_next = mm(dp, W_hh)
    return {"dpre": dpre, "dx": dx, "dW_ih": dW_ih, "dW_hh": dW_hh,
            "db_ih": db, "db_hh": db.copy(), "dh0": dh_next}


# --------------------------------------------------------------------------------------
# GRU layer
# --------------------------------------------------------------------------------------
def gru_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, mm=matmul, mm_in=matmul):
    """x [T, B, D] -> dict with hs [T, B, H], gates [T, B, 3H] (activated, order r, z, n),
    ghn [T, B, H] (h_{t-1} W_hn^T + b_hn) and what the backward pass needs."""
    x = np.asarray(x, F64)
    T = x.shape[0]
    H = W_hh.shape[1]
    W_ih, W_hh = np.asarray(W_ih, F64), np.asarray(W_hh, F64)
    b_ih, b_hh = np.asarray(b_ih, F64), np.asarray(b_hh, F64)
    h = np.asarray(h0, F64).copy()
    hs, gates, ghns, h_prevs = [], [], [], []
    for t in range(T):
        gi = mm_in(x[t], W_ih.T) + b_ih                # input side, both biases kept apart
        gh = mm(h, W_hh.T) + b_hh                # recurrent side
        r = sigmoid(gi[:, 0 * H:1 * H] + gh[:, 0 * H:1 * H])
        z = sigmoid(gi[:, 1 * H:2 * H] + gh[:, 1 * H:2 * H])
        ghn = gh[:, 2 * H:3 * H]
        n = np.tanh(gi[:, 2 * H:3 * H] + r * ghn)
        h_prevs.append(h)
        h = (1.0 - z) * n + z * h
        hs.append(h)
        gates.append(np.concatenate([r, z, n], axis=1))
        ghns.append(ghn)
    return {"x": x, "W_ih": W_ih, "W_hh": W_hh, "mm": mm, "mm_in": mm_in, "hs": np.array(hs),
            "gates": np.array(gates), "ghn": np.array(ghns), "h_prev": np.array(h_prevs)}


def gru_layer_backward(fwd, dhs, dhT=None):
    """Backward through ``gru_layer_forward``.

    Returns a dict with dpre [T, B, 3H] (w.r.t. the input side gi = x W_ih^T + b_ih),
    drec [T, B, 3H] (w.r.t. the recurrent side gh = h W_hh^T + b_hh; equal to dpre on
    the r, z rows and r * dpre on the n rows), dx, dW_ih, dW_hh, db_ih, db_hh, dh0.
    """
    x, W_ih, W_hh = fwd["x"], fwd["W_ih"], fwd["W_hh"]
    mm, mm_in = fwd["mm"], fwd["mm_in"]
    T, B, H = fwd["hs"].shape
    dh_next = np.zeros((B, H)) if dhT is None else np.asarray(dhT, F64).copy()
    dpre = np.zeros((T, B, 3 * H))
    drec = np.zeros((T, B, 3 * H))
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db_ih = np.zeros(3 * H)
    db_hh = np.zeros(3 * H)
    for t in range(T - 1, -1, -1):
        gt = fwd["gates"][t]
        r, z, n = (gt[:, k * H:(k + 1) * H] for k in range(3))
        ghn = fwd["ghn"][t]
        h_prev = fwd["h_prev"][t]
        dh = dhs[t] + dh_next                       # h_t feeds the layer above and step t+1
        # h_t = (1 - z) * n + z * h_prev
        dn = dh * (1.0 - z)
        dz = dh * (h_prev - n)
        dh_prev_direct = dh * z
        # n = tanh(a_n), a_n = gi_n + r * gh_n
        da_n = dn * (1.0 - n ** 2)
        dr = da_n * ghn
        dghn = da_n * r
        # r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z)
        da_r = dr * r * (1.0 - r)
        da_z = dz * z * (1.0 - z)
        dgi = np.concatenate([da_r, da_z, da_n], axis=1)
        dgh = np.concatenate([da_r, da_z, dghn], axis=1)
        dpre[t] = dgi
        drec[t] = dgh
        dW_ih += mm_in(dgi.T, x[t])
        db_ih += dgi.sum(axis=0)
        dW_hh += mm(dgh.T, h_prev)
        db_hh += dgh.sum(axis=0)
        dx[t] = mm_in(dgi, W_ih)
        dh_next = mm(dgh, W_hh) + dh_prev_direct
    return {"dpre": dpre, "drec": drec, "dx": dx, "dW_ih": dW_ih, "dW_hh": dW_hh,
            "db_ih": db_ih, "db_hh": db_hh, "dh0": dh_next}


# --------------------------------------------------------------------------------------
# whole model
# --------------------------------------------------------------------------------------
CELLS = ("lstm", "rnn", "gru", "peephole", "cifg")
CELL_STATE_CELLS = ("lstm", "peephole", "cifg")  # the cells that carry c
PEEPHOLES = ("weight_ci", "weight_cf", "weight_co")


def _num_layers(params):
    return sum(1 for name in params if name.startswith("rnn.weight_ih_l"))


def reference_forward(cell, params, inputs, h0, c0=None, masks=None, mm=matmul):
    """Run the model; returns (layer forward dicts, logits [T, B, V], hT, cT).

    ``masks``: None, or per layer a [T, B, H] inverted-dropout mask (0 or 1/(1-p)) that
    multiplies the layer's output where the next layer or the decoder reads it.
    ``mm``: the product of every matrix multiplication but layer 0's input projection,
    which is a row lookup in charlstm (``bf16_matmul``: the twin of a bfloat16 run)."""
    assert cell in CELLS
    p = {k: np.asarray(v, F64) for k, v in params.items()}
    L = _num_layers(p)
    V = p["decoder.weight"].shape[0]
    inputs = np.asarray(inputs)
    x = onehot(inputs.T, V)                         # [T, B, V]
    layers, hT, cT = [], [], []
    for k in range(L):
        args = (x, p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"],
                p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"], h0[k])
        products = dict(mm=mm, mm_in=matmul if k == 0 else mm)
        if cell == "lstm":
            fwd = lstm_layer_forward(*args, c0[k], **products)
        elif cell == "peephole":
            weights = [p[f"rnn.{name}_l{k}"] for name in PEEPHOLES]
            fwd = peephole_layer_forward(*args[:5], *weights, h0[k], c0[k], **products)
        elif cell == "cifg":
            fwd = cifg_layer_forward(*args, c0[k], **products)
        elif cell == "gru":
            fwd = gru_layer_forward(*args, **products)
        else:
            fwd = rnn_layer_forward(*args, **products)
        layers.append(fwd)
        hT.append(fwd["hs"][-1])
        if cell in CELL_STATE_CELLS:
            cT.append(fwd["cs"][-1])
        x = fwd["hs"] if masks is None else fwd["hs"] * masks[k]
    logits = mm(x, p["decoder.weight"].T) + p["decoder.bias"]
    return layers, logits, np.array(hT), (np.array(cT) if cell in CELL_STATE_CELLS else None)


def reference_loss_and_grads(cell, params, inputs, targets, h0, c0=None, masks=None,
                             mm=matmul):
    """Mean cross-entropy over the B*T positions and its gradients (``mm`` as in
    ``reference_forward``).

    Returns (loss, grads {name: array}, dh0 [L, B, H], dc0 [L, B, H] or None,
    final h [L, B, H], final c [L, B, H] or None).
    """
    p = {k: np.asarray(v, F64) for k, v in params.items()}
    L = _num_layers(p)
    V = p["decoder.weight"].shape[0]
    layers, logits, hT, cT = reference_forward(cell, p, inputs, h0, c0, masks, mm)
    T, B, _ = logits.shape
    N = T * B
    tgt = np.asarray(targets).T                     # [T, B]
    loss_sum, dlogits = softmax_xent_ref(logits.reshape(N, V), tgt.reshape(N))
    loss = loss_sum / N
    dlogits = (dlogits / N).reshape(T, B, V)

    grads = {}
    top = layers[-1]["hs"] if masks is None else layers[-1]["hs"] * masks[-1]
    H = top.shape[2]
    grads["decoder.weight"] = mm(dlogits.reshape(N, V).T, top.reshape(N, H))
    grads["decoder.bias"] = dlogits.sum(axis=(0, 1))
    dhs = mm(dlogits.reshape(N, V), p["decoder.weight"]).reshape(T, B, H)
    dh0 = np.zeros((L, B, H))
    dc0 = np.zeros((L, B, H)) if cell in CELL_STATE_CELLS else None
    for k in range(L - 1, -1, -1):
        if masks is not None:
            dhs = dhs * masks[k]                    # d(masked output) -> d(output)
        if cell == "lstm":
            bwd = lstm_layer_backward(layers[k], dhs)
        elif cell == "peephole":
            bwd = peephole_layer_backward(layers[k], dhs)
        elif cell == "cifg":
            bwd = cifg_layer_backward(layers[k], dhs)
        elif cell == "gru":
            bwd = gru_layer_backward(layers[k], dhs)
        else:
            bwd = rnn_layer_backward(layers[k], dhs)
        dh0[k] = bwd["dh0"]
        if dc0 is not None:
            dc0[k] = bwd["dc0"]
        grads[f"rnn.weight_ih_l{k}"] = bwd["dW_ih"]
        grads[f"rnn.weight_hh_l{k}"] = bwd["dW_hh"]
        grads[f"rnn.bias_ih_l{k}"] = bwd["db_ih"]
        grads[f"rnn.bias_hh_l{k}"] = bwd["db_hh"]
        if cell == "peephole":
            grads[f"rnn.weight_ci_l{k}"] = bwd["dw_ci"]
            grads[f"rnn.weight_cf_l{k}"] = bwd["dw_cf"]
            grads[f"rnn.weight_co_l{k}"] = bwd["dw_co"]
        dhs = bwd["dx"]                             # layer k's input is layer k-1's h
    return loss, grads, dh0, dc0, hT, cT


def reference_loss_sum(cell, params, inputs, targets, h0, c0=None, masks=None):
    """Summed (not mean) cross-entropy, as ``Network.loss_sum`` returns it."""
    _, logits, _, _ = reference_forward(cell, params, inputs, h0, c0, masks)
    T, B, V = logits.shape
    loss_sum, _ = softmax_xent_ref(logits.reshape(T * B, V), np.asarray(targets).T.reshape(-1))
    return loss_sum
