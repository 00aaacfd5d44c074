"""charlstm's Numba kernels and Network against the plain NumPy twins in reference.py."""
from __future__ import annotations

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.kernels.lstm import lstm_backward, lstm_forward
from charlstm.kernels.onehot import onehot_backward, onehot_forward
from charlstm.kernels.rnn import rnn_backward, rnn_forward
from charlstm.kernels.softmax import softmax_xent_grad, softmax_xent_loss
from charlstm.model.parameters import init_params, param_shapes
from charlstm.model.network import Network

import reference as ref

RTOL = 1e-10  # float64 kernels vs float64 reference
ATOL = 1e-13  # for entries that are (nearly) zero, where a relative bound means nothing
V, H = 7, 5


def close(got, want, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)


def make_net(cell, num_layers, dtype=np.float64, seed=0):
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
    params = init_params(config, V, np.random.default_rng(seed), dtype=np.float64)
    if dtype != np.float64:
        params = params.astype(dtype)
    return Network(config, V, params)


def random_chunk(rng, B, T, L, cell):
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    h0 = rng.uniform(-0.9, 0.9, size=(L, B, H))
    c0 = rng.uniform(-1.5, 1.5, size=(L, B, H)) if cell == "lstm" else None
    return inputs, targets, h0, c0


def state_from(h0, c0, dtype):
    state = {"h": h0.astype(dtype)}
    if c0 is not None:
        state["c"] = c0.astype(dtype)
    return state


def net_config(net):
    return TrainConfig(cell=net.cell, hidden_size=net.H, num_layers=net.num_layers)


def params_dict(net):
    return {name: np.array(view, np.float64) for name, view in net.params.items()}


# --------------------------------------------------------------------------------------
# whole network, float64
# --------------------------------------------------------------------------------------
SHAPES = [(3, 4), (3, 1), (1, 4)]  # (B, T); T=1 and B=1 are the edge cases


@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_network_matches_reference(cell, num_layers, B, T):
    rng = np.random.default_rng(100 + 10 * num_layers + T)
    net = make_net(cell, num_layers, seed=num_layers)
    inputs, targets, h0, c0 = random_chunk(rng, B, T, num_layers, cell)
    lstm = cell == "lstm"

    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = ref.reference_loss_and_grads(
        cell, params_dict(net), inputs, targets, h0, c0)

    state = state_from(h0, c0, np.float64)
    net.grads.flat[:] = np.nan  # every gradient entry must be written, none accumulated
    loss = net.loss_and_grad(inputs, targets, state)
    assert isinstance(loss, float) or np.ndim(loss) == 0
    close(loss, want_loss, what="loss")
    assert set(net.grads) == set(want_grads) == set(param_shapes(net_config(net), V))
    for name in want_grads:
        assert net.grads[name].shape == want_grads[name].shape, name
        close(net.grads[name], want_grads[name], what=name)
    ws = net.workspace(T, B)
    close(ws.dh0, want_dh0, what="dh0")
    close(state["h"], want_hT, what="final h")
    if lstm:
        close(ws.dc0, want_dc0, what="dc0")
        close(state["c"], want_cT, what="final c")

    # Network.loss_sum: the summed loss of the same chunk, carrying the same final state.
    state2 = state_from(h0, c0, np.float64)
    loss_sum = net.loss_sum(inputs, targets, state2)
    close(loss_sum, want_loss * B * T, what="summed loss")
    close(state2["h"], want_hT, what="final h (loss)")
    if lstm:
        close(state2["c"], want_cT, what="final c (loss)")


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_network_repeated_calls_overwrite_not_accumulate(cell):
    """Workspaces and gradients are reused across calls and chunk shapes: a second call
    on the same chunk (after calls on other shapes and a no-grad pass) must give exactly
    the same results as the first, and the carried state must feed the next chunk."""
    L = 2
    rng = np.random.default_rng(7)
    net = make_net(cell, L, seed=3)
    inputs, targets, h0, c0 = random_chunk(rng, 3, 4, L, cell)
    p = params_dict(net)

    state = state_from(h0, c0, np.float64)
    loss1 = net.loss_and_grad(inputs, targets, state)
    grads1 = net.grads.flat.copy()
    dh01 = net.workspace(4, 3).dh0.copy()
    dc01 = net.workspace(4, 3).dc0.copy()

    other_in, other_tg, oh0, oc0 = random_chunk(rng, 2, 5, L, cell)
    net.loss_and_grad(other_in, other_tg, state_from(oh0, oc0, np.float64))
    net.loss_sum(inputs, targets, state_from(h0, c0, np.float64))

    loss2 = net.loss_and_grad(inputs, targets, state_from(h0, c0, np.float64))
    assert loss2 == loss1
    np.testing.assert_array_equal(net.grads.flat, grads1)
    np.testing.assert_array_equal(net.workspace(4, 3).dh0, dh01)
    np.testing.assert_array_equal(net.workspace(4, 3).dc0, dc01)

    # Two consecutive chunks with carried state equal the reference run on chunk 2 from
    # the reference's final state of chunk 1.
    in2, tg2, _, _ = random_chunk(rng, 3, 4, L, cell)
    state = state_from(h0, c0, np.float64)
    net.loss_and_grad(inputs, targets, state)
    loss_b = net.loss_and_grad(in2, tg2, state)
    _, _, _, _, hT, cT = ref.reference_loss_and_grads(cell, p, inputs, targets, h0, c0)
    want = ref.reference_loss_and_grads(cell, p, in2, tg2, hT, cT)
    close(loss_b, want[0], what="loss of chunk 2")
    for name in want[1]:
        close(net.grads[name], want[1][name], what=name)
    close(state["h"], want[4], what="final h after chunk 2")
    if cell == "lstm":
        close(state["c"], want[5], what="final c after chunk 2")


# --------------------------------------------------------------------------------------
# whole network, float32 against the float64 reference
# --------------------------------------------------------------------------------------
RTOL32 = 1e-4


def close32(got, want, what):
    """Per-tensor: |got - want| <= RTOL32 * (|want| + max|want|) elementwise, i.e. relative
    to each entry but never tighter than 1e-4 of the tensor's largest entry."""
    got = np.asarray(got, np.float64)
    scale = np.max(np.abs(want)) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32 * scale, err_msg=what)


@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
def test_network_float32_matches_float64_reference(cell, num_layers):
    B, T = 3, 4
    rng = np.random.default_rng(200 + num_layers)
    net = make_net(cell, num_layers, dtype=np.float32, seed=5)
    assert net.dtype == np.float32
    inputs, targets, h0, c0 = random_chunk(rng, B, T, num_layers, cell)
    # Round the state to float32 first: the reference then sees exactly the same numbers
    # (params are float32 already), and only float32 arithmetic separates the two.
    state = state_from(h0, c0, np.float32)
    h0r = state["h"].astype(np.float64)
    c0r = state["c"].astype(np.float64) if c0 is not None else None
    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = ref.reference_loss_and_grads(
        cell, params_dict(net), inputs, targets, h0r, c0r)

    net.grads.flat[:] = np.nan
    loss = net.loss_and_grad(inputs, targets, state)
    assert np.isfinite(loss)
    close32(loss, want_loss, "loss")
    for name in want_grads:
        assert net.grads[name].dtype == np.float32, name
        close32(net.grads[name], want_grads[name], name)
    ws = net.workspace(T, B)
    assert ws.dh0.dtype == np.float32
    close32(ws.dh0, want_dh0, "dh0")
    close32(state["h"], want_hT, "final h")
    if cell == "lstm":
        close32(ws.dc0, want_dc0, "dc0")
        close32(state["c"], want_cT, "final c")


# --------------------------------------------------------------------------------------
# kernels one at a time
# --------------------------------------------------------------------------------------
def layer_inputs(rng, T, B, D, G):
    x = rng.normal(size=(T, B, D))
    W_ih = rng.uniform(-0.6, 0.6, size=(G * H, D))
    W_hh = rng.uniform(-0.6, 0.6, size=(G * H, H))
    b_ih = rng.uniform(-0.5, 0.5, size=G * H)
    b_hh = rng.uniform(-0.5, 0.5, size=G * H)
    h0 = rng.uniform(-0.9, 0.9, size=(B, H))
    return x, W_ih, W_hh, b_ih, b_hh, h0


@pytest.mark.parametrize("T", [4, 1])
def test_lstm_kernels(T):
    B, D = 3, 6
    rng = np.random.default_rng(11 + T)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D, 4)
    c0 = rng.uniform(-1.5, 1.5, size=(B, H))
    fwd = ref.lstm_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, c0)

    xproj = np.ascontiguousarray(x @ W_ih.T + b_ih + b_hh)
    xproj_in = xproj.copy()
    hs = np.full((T, B, H), np.nan)
    cs = np.full((T, B, H), np.nan)
    tanh_cs = np.full((T, B, H), np.nan)
    gates = np.full((T, B, 4 * H), np.nan)
    lstm_forward(xproj, W_hh, h0, c0, hs, cs, gates, tanh_cs)
    np.testing.assert_array_equal(xproj, xproj_in)
    close(hs, fwd["hs"], what="hs")
    close(cs, fwd["cs"], what="cs")
    close(tanh_cs, fwd["tanh_cs"], what="tanh_cs")
    close(gates, fwd["gates"], what="gates")

    # Non-zero gradient arriving at the final state too, not only from above.
    dhs = rng.normal(size=(T, B, H))
    dhT = rng.normal(size=(B, H))
    dcT = rng.normal(size=(B, H))
    bwd = ref.lstm_layer_backward(fwd, dhs, dhT, dcT)
    dh, dc = dhT.copy(), dcT.copy()
    dpre = np.full((T, B, 4 * H), np.nan)
    saved = [a.copy() for a in (cs, gates, tanh_cs, dhs)]
    lstm_backward(W_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
    for before, after in zip(saved, (cs, gates, tanh_cs, dhs)):
        np.testing.assert_array_equal(after, before)
    close(dpre, bwd["dpre"], what="dpre")
    close(dh, bwd["dh0"], what="dh0")
    close(dc, bwd["dc0"], what="dc0")


@pytest.mark.parametrize("T", [4, 1])
def test_rnn_kernels(T):
    B, D = 3, 6
    rng = np.random.default_rng(21 + T)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D, 1)
    fwd = ref.rnn_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0)

    xproj = np.ascontiguousarray(x @ W_ih.T + b_ih + b_hh)
    xproj_in = xproj.copy()
    hs = np.full((T, B, H), np.nan)
    scratch = np.full((B, H), np.nan)
    rnn_forward(xproj, W_hh, h0, hs, scratch)
    np.testing.assert_array_equal(xproj, xproj_in)
    close(hs, fwd["hs"], what="hs")

    dhs = rng.normal(size=(T, B, H))
    dhT = rng.normal(size=(B, H))
    bwd = ref.rnn_layer_backward(fwd, dhs, dhT)
    dh = dhT.copy()
    dpre = np.full((T, B, H), np.nan)
    hs_in, dhs_in = hs.copy(), dhs.copy()
    rnn_backward(W_hh, hs, dhs, dh, dpre)
    np.testing.assert_array_equal(hs, hs_in)
    np.testing.assert_array_equal(dhs, dhs_in)
    close(dpre, bwd["dpre"], what="dpre")
    close(dh, bwd["dh0"], what="dh0")


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_cell_kernels_float32_saturated(cell):
    """float32 kernels (which use their own exp) on pre-activations from tiny to huge
    (|x| up to 1e4, past exp's float32 range) stay finite and match the float64 reference
    run on the same float32-rounded inputs."""
    T, B = 5, 3
    G = 4 if cell == "lstm" else 1
    rng = np.random.default_rng(61)
    f32 = np.float32
    xproj = rng.normal(scale=3.0, size=(T, B, G * H))
    xproj[1] *= 30.0
    xproj[2, 0, :] = 1e4
    xproj[2, 1, :] = -1e4
    xproj[3, 2, :] = rng.choice([-100.0, -88.5, -87.0, 87.0, 88.5, 100.0], size=G * H)
    xproj[4] = rng.normal(scale=1e-4, size=(B, G * H))
    xproj = xproj.astype(f32)
    W_hh = rng.uniform(-0.6, 0.6, size=(G * H, H)).astype(f32)
    h0 = rng.uniform(-0.9, 0.9, size=(B, H)).astype(f32)
    dhs = rng.normal(size=(T, B, H)).astype(f32)
    dhT = rng.normal(size=(B, H)).astype(f32)
    # The reference takes x and W_ih: an identity W_ih makes x the projection itself.
    x64 = xproj.astype(np.float64)
    eye, zero = np.eye(G * H), np.zeros(G * H)
    W64, h064 = W_hh.astype(np.float64), h0.astype(np.float64)
    hs = np.empty((T, B, H), f32)
    if cell == "lstm":
        c0 = rng.uniform(-1.5, 1.5, size=(B, H)).astype(f32)
        dcT = rng.normal(size=(B, H)).astype(f32)
        fwd = ref.lstm_layer_forward(x64, eye, W64, zero, zero, h064, c0.astype(np.float64))
        bwd = ref.lstm_layer_backward(fwd, dhs.astype(np.float64), dhT, dcT)
        cs, tanh_cs = np.empty((T, B, H), f32), np.empty((T, B, H), f32)
        gates = np.empty((T, B, G * H), f32)
        lstm_forward(xproj, W_hh, h0, c0, hs, cs, gates, tanh_cs)
        outputs = {"hs": hs, "cs": cs, "tanh_cs": tanh_cs, "gates": gates}
        dh, dc, dpre = dhT.copy(), dcT.copy(), np.empty((T, B, G * H), f32)
        lstm_backward(W_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
        outputs.update(dpre=dpre, dh0=dh, dc0=dc)
    else:
        fwd = ref.rnn_layer_forward(x64, eye, W64, zero, zero, h064)
        bwd = ref.rnn_layer_backward(fwd, dhs.astype(np.float64), dhT)
        rnn_forward(xproj, W_hh, h0, hs, np.empty((B, H), f32))
        outputs = {"hs": hs}
        dh, dpre = dhT.copy(), np.empty((T, B, H), f32)
        rnn_backward(W_hh, hs, dhs, dh, dpre)
        outputs.update(dpre=dpre, dh0=dh)
    want = dict(fwd, **bwd)
    for name, got in outputs.items():
        assert got.dtype == f32, name
        assert np.all(np.isfinite(got)), name
        close32(got, want[name], name)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_layer_weight_grads_from_dpre(cell):
    """The reference's dpre really is d/dpre: contracting it the way network.py does
    reproduces the reference's own weight, bias and input gradients."""
    T, B, D = 4, 3, 6
    G = 4 if cell == "lstm" else 1
    rng = np.random.default_rng(31)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D, G)
    dhs = rng.normal(size=(T, B, H))
    if cell == "lstm":
        fwd = ref.lstm_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, rng.normal(size=(B, H)))
        bwd = ref.lstm_layer_backward(fwd, dhs)
    else:
        fwd = ref.rnn_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0)
        bwd = ref.rnn_layer_backward(fwd, dhs)
    dpre = bwd["dpre"]
    close(np.einsum("tbg,tbd->gd", dpre, x), bwd["dW_ih"])
    close(np.einsum("tbg,tbh->gh", dpre, fwd["h_prev"]), bwd["dW_hh"])
    close(dpre.sum(axis=(0, 1)), bwd["db_ih"])
    close(dpre @ W_ih, bwd["dx"])


def test_onehot_kernels():
    rng = np.random.default_rng(41)
    N, D = 12, 4 * H
    table = rng.normal(size=(V, D))
    ids = rng.integers(0, V, size=N).astype(np.int32)
    ids[:3] = ids[3]  # repeated ids must accumulate in the backward
    out = np.full((N, D), np.nan)
    onehot_forward(table, ids, out)
    close(out, ref.onehot_forward_ref(table, ids), what="onehot_forward")

    dpre = rng.normal(size=(N, D))
    dtable = np.full((V, D), 123.0)  # stale contents must be overwritten, not added to
    onehot_backward(dpre, ids, dtable)
    close(dtable, ref.onehot_backward_ref(dpre, ids, V), what="onehot_backward")
    missing = sorted(set(range(V)) - set(ids.tolist()))
    assert np.all(dtable[missing] == 0.0)


def softmax_cases(rng):
    N = 6
    logits = rng.normal(scale=3.0, size=(N, V))
    logits[1] = 0.0  # uniform row
    logits[2, :] = -1e4
    logits[2, 4] = 1e4  # huge logits: the target (below) is the winner
    logits[3] = np.linspace(-1e4, 1e4, V)  # huge logits: the target is the loser
    logits[4] = 1e4  # all equal and huge
    logits[5, 0] = -1e4
    targets = rng.integers(0, V, size=N).astype(np.int32)
    targets[2] = 4
    targets[3] = 0
    return logits, targets


def test_softmax_kernels():
    rng = np.random.default_rng(51)
    logits, targets = softmax_cases(rng)
    want_loss, want_grad = ref.softmax_xent_ref(logits, targets)
    assert np.isfinite(want_loss)

    loss = softmax_xent_loss(logits, targets)
    assert np.isfinite(loss)
    close(loss, want_loss, what="softmax_xent_loss")

    scale = 1.0 / 7.0
    work = logits.copy()
    loss2 = softmax_xent_grad(work, targets, scale)
    assert np.isfinite(loss2) and np.all(np.isfinite(work))
    close(loss2, want_loss, what="softmax_xent_grad loss")
    close(work, scale * want_grad, what="softmax_xent_grad")
    # The huge rows, spelled out.
    close(work[2], 0.0, atol=1e-300, what="winner row has zero gradient")
    close(work[3, 0], -scale, what="loser: -scale at the target")
    close(work[3, -1], scale, what="loser: +scale at the winner")
    close(work[4], scale * (np.full(V, 1.0 / V) - np.eye(V)[targets[4]]), what="flat huge row")


def test_softmax_kernels_float32_huge_logits():
    rng = np.random.default_rng(52)
    logits64, targets = softmax_cases(rng)
    logits = logits64.astype(np.float32)
    want_loss, want_grad = ref.softmax_xent_ref(logits.astype(np.float64), targets)
    loss = softmax_xent_loss(logits, targets)
    work = logits.copy()
    loss2 = softmax_xent_grad(work, targets, np.float32(1.0))
    assert np.isfinite(loss) and np.isfinite(loss2) and np.all(np.isfinite(work))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(loss2, want_loss, rtol=1e-5)
    np.testing.assert_allclose(work, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_panel_product_matches_numpy(dtype):
    """charlstm's own step product (kernels/panels.py) against NumPy's a @ B in float64,
    at the step shapes and at ragged ones: rows not a multiple of the register block,
    columns not a multiple of the panel width, weights read transposed or not. Nothing
    past the output is written, and the panels' padding columns are zero."""
    from charlstm.kernels.panels import PANEL_WIDTH, pack_panels, panel_buffer, panel_product
    from charlstm.kernels.jit import kernel

    @kernel
    def product(a, panels, out):
        panel_product(a, panels, out)

    rng = np.random.default_rng(4)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    for m, k, n in [(16, 64, 256), (16, 256, 64), (1, 3, 5), (5, 7, 33), (13, 40, 160),
                    (3, 64, 31), (11, 9, 97), (8, 1, 32)]:
        for transpose in (True, False):
            weight = rng.standard_normal((n, k) if transpose else (k, n)).astype(dtype)
            b = weight.T if transpose else weight
            panels = panel_buffer(k, n, dtype)
            panels[...] = np.nan
            pack_panels(weight, panels, transpose)
            blocks = panels.reshape(-1, k, PANEL_WIDTH)
            assert np.all(blocks[-1, :, n - (len(blocks) - 1) * PANEL_WIDTH:] == 0)
            a = rng.standard_normal((m, k)).astype(dtype)
            memory = np.full(m * n + PANEL_WIDTH, np.nan, dtype)  # a guard past the end
            target = memory[:m * n].reshape(m, n)
            product(a, panels, target)
            assert np.isnan(memory[m * n:]).all(), "wrote past the output"
            want = a.astype(np.float64) @ b.astype(np.float64)
            scale = np.abs(want).max()
            close(target, want, rtol=0, atol=tol * scale * k ** 0.5,
                  what=f"{m}x{k}x{n} transpose={transpose}")
