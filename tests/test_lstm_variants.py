"""The two LSTM variants, ``--cell peephole`` (Gers, Schraudolph & Schmidhuber 2002) and
``--cell cifg`` (coupled input and forget gates, Greff et al. 2017): kernels, network,
float32, sampling, checkpoints and training runs, each against an independent
computation.

The finite-difference checks of every gradient are cases of tests/test_gradcheck.py (and
`charlstm gradcheck --cell` of tests/test_gradcheck_cli.py), the PyTorch autograd twins
are in tests/test_torch_parity.py, sampling at every temperature in tests/test_sampling.py
and the per-step gradient flow in tests/test_gradflow.py; all of them run these cells.
"""
from __future__ import annotations

import json
import types
import zipfile

import numpy as np
import pytest

from charlstm.model import checkpoint as ckpt_io
from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import CELLS, GATES, TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.errors import CheckpointError
from charlstm.kernels.blas import matmul_nt
from charlstm.kernels.cifg import cifg_backward, cifg_forward, cifg_step
from charlstm.kernels.peephole import (peephole_backward, peephole_forward, peephole_step,
                                       peephole_weight_grads)
from charlstm.model.network import Network
from charlstm.model.parameters import init_params, param_shapes
from charlstm.model.sample import Sampler

from conftest import assert_resume_is_bit_identical, make_text, run_cli, tiny_config, \
    train_split_and_whole

import reference as ref

RTOL = 1e-10  # float64 kernels vs float64 reference
ATOL = 1e-13  # for entries that are (nearly) zero, where a relative bound means nothing
RTOL32 = 1e-4
V, H = 7, 5
VARIANTS = ("peephole", "cifg")


def close(got, want, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)


def close32(got, want, what):
    """|got - want| <= RTOL32 * (|want| + max|want|) elementwise (as in test_kernels)."""
    got = np.asarray(got, np.float64)
    scale = np.max(np.abs(want)) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32 * scale, err_msg=what)


def make_net(cell, num_layers, dtype=np.float64, seed=0, **settings):
    cfg = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers, **settings)
    params = init_params(cfg, V, np.random.default_rng(seed), dtype=np.float64)
    if dtype != np.float64:
        params = params.astype(dtype)
    return Network(cfg, V, params)


def random_chunk(rng, B, T, L):
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    h0 = rng.uniform(-0.9, 0.9, size=(L, B, H))
    c0 = rng.uniform(-1.5, 1.5, size=(L, B, H))
    return inputs, targets, h0, c0


def params_dict(net):
    return {name: np.array(view, np.float64) for name, view in net.params.items()}


def test_the_table_rows():
    peephole, cifg = CELL_TABLE["peephole"], CELL_TABLE["cifg"]
    assert set(VARIANTS) <= set(CELLS)
    assert GATES["peephole"] == 4 and GATES["cifg"] == 3
    assert peephole.state == cifg.state == ("h", "c")
    assert peephole.torch_module is None and cifg.torch_module is None
    shapes = param_shapes(TrainConfig(cell="peephole", hidden_size=H, num_layers=2), V)
    assert list(shapes)[:7] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                                "rnn.bias_hh_l0", "rnn.weight_ci_l0", "rnn.weight_cf_l0",
                                "rnn.weight_co_l0"]
    assert shapes["rnn.weight_co_l1"] == (H,) and shapes["rnn.weight_hh_l1"] == (4 * H, H)
    shapes = param_shapes(TrainConfig(cell="cifg", hidden_size=H, num_layers=2), V)
    assert shapes["rnn.weight_ih_l0"] == (3 * H, V) and shapes["rnn.bias_hh_l1"] == (3 * H,)
    assert not any("weight_c" in name for name in shapes)


# --------------------------------------------------------------------------------------
# whole network, float64, against the reference
# --------------------------------------------------------------------------------------
SHAPES = [(3, 4), (3, 1), (1, 4)]  # (B, T); T=1 and B=1 are the edge cases


@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", VARIANTS)
def test_network_matches_reference(cell, num_layers, B, T):
    rng = np.random.default_rng(400 + 10 * num_layers + T)
    net = make_net(cell, num_layers, seed=num_layers)
    inputs, targets, h0, c0 = random_chunk(rng, B, T, num_layers)
    p = params_dict(net)
    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = ref.reference_loss_and_grads(
        cell, p, inputs, targets, h0, c0)

    state = {"h": h0.copy(), "c": c0.copy()}
    net.grads.flat[:] = np.nan  # every gradient entry must be written, none accumulated
    loss = net.loss_and_grad(inputs, targets, state)
    close(loss, want_loss, what="loss")
    assert set(net.grads) == set(want_grads) == set(param_shapes(net_config(net), V))
    for name in want_grads:
        assert net.grads[name].shape == want_grads[name].shape, name
        close(net.grads[name], want_grads[name], what=name)
    ws = net.workspace(T, B)
    close(ws.dh0, want_dh0, what="dh0")
    close(ws.dc0, want_dc0, what="dc0")
    close(state["h"], want_hT, what="final h")
    close(state["c"], want_cT, what="final c")

    state2 = {"h": h0.copy(), "c": c0.copy()}
    close(net.loss_sum(inputs, targets, state2), want_loss * B * T, what="summed loss")
    close(state2["h"], want_hT, what="final h (loss)")
    close(state2["c"], want_cT, what="final c (loss)")


def net_config(net):
    return TrainConfig(cell=net.cell, hidden_size=net.H, num_layers=net.num_layers)


@pytest.mark.parametrize("cell", VARIANTS)
def test_network_repeated_calls_and_carried_state(cell):
    """Reused workspaces and gradients overwrite, never accumulate; the carried state
    (h and c) feeds the next chunk exactly as the reference's final state does."""
    L = 2
    rng = np.random.default_rng(8)
    net = make_net(cell, L, seed=3)
    inputs, targets, h0, c0 = random_chunk(rng, 3, 4, L)
    p = params_dict(net)

    def fresh():
        return {"h": h0.copy(), "c": c0.copy()}

    loss1 = net.loss_and_grad(inputs, targets, fresh())
    grads1 = net.grads.flat.copy()
    dc01 = net.workspace(4, 3).dc0.copy()
    o_in, o_tg, oh0, oc0 = random_chunk(rng, 2, 5, L)
    net.loss_and_grad(o_in, o_tg, {"h": oh0, "c": oc0})
    net.loss_sum(inputs, targets, fresh())
    assert net.loss_and_grad(inputs, targets, fresh()) == loss1
    np.testing.assert_array_equal(net.grads.flat, grads1)
    np.testing.assert_array_equal(net.workspace(4, 3).dc0, dc01)

    in2, tg2, _, _ = random_chunk(rng, 3, 4, L)
    state = fresh()
    net.loss_and_grad(inputs, targets, state)
    loss_b = net.loss_and_grad(in2, tg2, state)
    _, _, _, _, hT, cT = ref.reference_loss_and_grads(cell, p, inputs, targets, h0, c0)
    want = ref.reference_loss_and_grads(cell, p, in2, tg2, hT, cT)
    close(loss_b, want[0], what="loss of chunk 2")
    for name in want[1]:
        close(net.grads[name], want[1][name], what=name)
    close(state["h"], want[4], what="final h after chunk 2")
    close(state["c"], want[5], what="final c after chunk 2")


@pytest.mark.parametrize("cell", VARIANTS)
def test_every_copy_of_weight_hh_gives_the_same_result(cell):
    """The kernels' step products read weight_hh as stored, as a transposed copy or
    packed into panels (--step-weights): all give the reference's numbers."""
    rng = np.random.default_rng(9)
    inputs, targets, h0, c0 = random_chunk(rng, 3, 4, 2)
    nets = {w: make_net(cell, 2, seed=4, step_weights=w)
            for w in ("stored/stored", "transposed/transposed", "transposed/stored",
                      "panels/panels")}
    want_loss, want_grads, want_dh0, want_dc0, _, _ = ref.reference_loss_and_grads(
        cell, params_dict(nets["stored/stored"]), inputs, targets, h0, c0)
    for which, net in nets.items():
        close(net.loss_and_grad(inputs, targets, {"h": h0.copy(), "c": c0.copy()}), want_loss,
              what=which)
        for name in want_grads:
            close(net.grads[name], want_grads[name], what=f"{which} {name}")
        close(net.workspace(4, 3).dh0, want_dh0, what=f"{which} dh0")
        close(net.workspace(4, 3).dc0, want_dc0, what=f"{which} dc0")


# --------------------------------------------------------------------------------------
# each cell is what it claims to be, checked against the plain LSTM
# --------------------------------------------------------------------------------------
def test_peephole_with_zero_peepholes_is_the_lstm():
    """With w_ci = w_cf = w_co = 0 the peephole cell is the LSTM, to the last bit, and its
    peephole gradients are what the LSTM's cell states imply."""
    rng = np.random.default_rng(12)
    inputs, targets, h0, c0 = random_chunk(rng, 3, 4, 2)
    peephole = make_net("peephole", 2, seed=6)
    lstm = make_net("lstm", 2, seed=6)
    for name, view in lstm.params.items():
        view[...] = peephole.params[name]
    for name in peephole.params:
        if "weight_c" in name:
            peephole.params[name][...] = 0.0
    loss = peephole.loss_and_grad(inputs, targets, {"h": h0.copy(), "c": c0.copy()})
    assert loss == lstm.loss_and_grad(inputs, targets, {"h": h0.copy(), "c": c0.copy()})
    for name in lstm.grads:
        np.testing.assert_array_equal(peephole.grads[name], lstm.grads[name], err_msg=name)
    # Sum over steps and streams of dL/da_i * c_{t-1} (the LSTM's dpre and cell states).
    ws = lstm.workspace(4, 3)
    c_prev = np.concatenate([ws.c0[1][None], ws.cs[1][:-1]])
    close(peephole.grads["rnn.weight_ci_l1"], np.sum(ws.xproj[1][..., :H] * c_prev, axis=(0, 1)))
    close(peephole.grads["rnn.weight_co_l1"], np.sum(ws.xproj[1][..., 3 * H:] * ws.cs[1],
                                                     axis=(0, 1)))


def test_cifg_is_the_lstm_with_its_forget_gate_tied_to_the_input_gate():
    """An LSTM whose forget rows are the negated input rows has f = sigmoid(-a_i) = 1 - i:
    the CIFG's forward pass. Its gradient with respect to the shared input rows is the
    LSTM's input-row gradient minus its forget-row gradient."""
    rng = np.random.default_rng(13)
    inputs, targets, h0, c0 = random_chunk(rng, 3, 4, 2)
    cifg = make_net("cifg", 2, seed=7)
    lstm = make_net("lstm", 2, seed=8)
    blocks = {"i": slice(0, H), "g": slice(H, 2 * H), "o": slice(2 * H, 3 * H)}
    lstm_blocks = {"i": slice(0, H), "f": slice(H, 2 * H), "g": slice(2 * H, 3 * H),
                   "o": slice(3 * H, 4 * H)}
    for name, view in cifg.params.items():
        if name.startswith("decoder"):
            lstm.params[name][...] = view
            continue
        target = lstm.params[name]
        for gate, rows in blocks.items():
            target[lstm_blocks[gate]] = view[rows]
        target[lstm_blocks["f"]] = -view[blocks["i"]]
    loss = cifg.loss_and_grad(inputs, targets, {"h": h0.copy(), "c": c0.copy()})
    close(lstm.loss_and_grad(inputs, targets, {"h": h0.copy(), "c": c0.copy()}), loss,
          rtol=1e-13)
    for name, grad in cifg.grads.items():
        if name.startswith("decoder"):
            close(grad, lstm.grads[name], what=name)
            continue
        tied = lstm.grads[name]
        close(grad[blocks["i"]], tied[lstm_blocks["i"]] - tied[lstm_blocks["f"]], what=name)
        close(grad[blocks["g"]], tied[lstm_blocks["g"]], what=name)
        close(grad[blocks["o"]], tied[lstm_blocks["o"]], what=name)
    close(cifg.workspace(4, 3).dc0, lstm.workspace(4, 3).dc0, what="dc0")


# --------------------------------------------------------------------------------------
# the kernels one at a time
# --------------------------------------------------------------------------------------
def layer_inputs(rng, T, B, D, G):
    x = rng.normal(size=(T, B, D))
    W_ih = rng.uniform(-0.6, 0.6, size=(G * H, D))
    W_hh = rng.uniform(-0.6, 0.6, size=(G * H, H))
    b_ih = rng.uniform(-0.5, 0.5, size=G * H)
    b_hh = rng.uniform(-0.5, 0.5, size=G * H)
    h0 = rng.uniform(-0.9, 0.9, size=(B, H))
    c0 = rng.uniform(-1.5, 1.5, size=(B, H))
    return x, W_ih, W_hh, b_ih, b_hh, h0, c0


@pytest.mark.parametrize("T", [4, 1])
def test_peephole_kernels(T):
    B, D = 3, 6
    rng = np.random.default_rng(81 + T)
    x, W_ih, W_hh, b_ih, b_hh, h0, c0 = layer_inputs(rng, T, B, D, 4)
    # Peepholes larger than the default initialisation, so that each one matters.
    w_ci, w_cf, w_co = (rng.uniform(-1.5, 1.5, size=H) for _ in range(3))
    fwd = ref.peephole_layer_forward(x, W_ih, W_hh, b_ih, b_hh, w_ci, w_cf, w_co, h0, c0)

    xproj = np.ascontiguousarray(x @ W_ih.T + b_ih + b_hh)
    inputs = (xproj, W_hh, w_ci, w_cf, w_co, h0, c0)
    before = [a.copy() for a in inputs]
    hs, cs, tanh_cs = (np.full((T, B, H), np.nan) for _ in range(3))
    gates = np.full((T, B, 4 * H), np.nan)
    peephole_forward(xproj, W_hh, w_ci, w_cf, w_co, h0, c0, hs, cs, gates, tanh_cs)
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b)
    for name, got in (("hs", hs), ("cs", cs), ("tanh_cs", tanh_cs), ("gates", gates)):
        close(got, fwd[name], what=name)

    # Non-zero gradient arriving at the final state too, not only from above.
    dhs = rng.normal(size=(T, B, H))
    dhT, dcT = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    bwd = ref.peephole_layer_backward(fwd, dhs, dhT, dcT)
    dh, dc = dhT.copy(), dcT.copy()
    dpre = np.full((T, B, 4 * H), np.nan)
    saved = [a.copy() for a in (cs, gates, tanh_cs, dhs, w_ci, w_cf, w_co)]
    peephole_backward(W_hh, w_ci, w_cf, w_co, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
    for a, b in zip((cs, gates, tanh_cs, dhs, w_ci, w_cf, w_co), saved):
        np.testing.assert_array_equal(a, b)
    close(dpre, bwd["dpre"], what="dpre")
    close(dh, bwd["dh0"], what="dh0")
    close(dc, bwd["dc0"], what="dc0")

    grads = [np.full(H, 123.0) for _ in range(3)]  # stale contents must be overwritten
    peephole_weight_grads(c0, cs, dpre, *grads)
    for name, got in zip(("dw_ci", "dw_cf", "dw_co"), grads):
        close(got, bwd[name], what=name)


@pytest.mark.parametrize("T", [4, 1])
def test_cifg_kernels(T):
    B, D = 3, 6
    rng = np.random.default_rng(91 + T)
    x, W_ih, W_hh, b_ih, b_hh, h0, c0 = layer_inputs(rng, T, B, D, 3)
    fwd = ref.cifg_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, c0)

    xproj = np.ascontiguousarray(x @ W_ih.T + b_ih + b_hh)
    xproj_in = xproj.copy()
    hs, cs, tanh_cs = (np.full((T, B, H), np.nan) for _ in range(3))
    gates = np.full((T, B, 3 * H), np.nan)
    cifg_forward(xproj, W_hh, h0, c0, hs, cs, gates, tanh_cs)
    np.testing.assert_array_equal(xproj, xproj_in)
    for name, got in (("hs", hs), ("cs", cs), ("tanh_cs", tanh_cs), ("gates", gates)):
        close(got, fwd[name], what=name)

    dhs = rng.normal(size=(T, B, H))
    dhT, dcT = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    bwd = ref.cifg_layer_backward(fwd, dhs, dhT, dcT)
    dh, dc = dhT.copy(), dcT.copy()
    dpre = np.full((T, B, 3 * H), np.nan)
    saved = [a.copy() for a in (cs, gates, tanh_cs, dhs)]
    cifg_backward(W_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
    for a, b in zip((cs, gates, tanh_cs, dhs), saved):
        np.testing.assert_array_equal(a, b)
    close(dpre, bwd["dpre"], what="dpre")
    close(dh, bwd["dh0"], what="dh0")
    close(dc, bwd["dc0"], what="dc0")


@pytest.mark.parametrize("cell", VARIANTS)
def test_reference_weight_grads_follow_from_dpre(cell):
    """The contract the network relies on: the reference's dpre really is d/da, so that
    contracting it the way network.py does gives the reference's own weight, bias and
    input gradients."""
    T, B, D = 4, 3, 6
    rng = np.random.default_rng(33)
    G = GATES[cell]
    x, W_ih, W_hh, b_ih, b_hh, h0, c0 = layer_inputs(rng, T, B, D, G)
    if cell == "peephole":
        weights = [rng.uniform(-1, 1, size=H) for _ in range(3)]
        fwd = ref.peephole_layer_forward(x, W_ih, W_hh, b_ih, b_hh, *weights, h0, c0)
        bwd = ref.peephole_layer_backward(fwd, rng.normal(size=(T, B, H)))
    else:
        fwd = ref.cifg_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0, c0)
        bwd = ref.cifg_layer_backward(fwd, rng.normal(size=(T, B, H)))
    dpre = bwd["dpre"]
    close(np.einsum("tbg,tbd->gd", dpre, x), bwd["dW_ih"])
    close(np.einsum("tbg,tbh->gh", dpre, fwd["h_prev"]), bwd["dW_hh"])
    close(dpre.sum(axis=(0, 1)), bwd["db_ih"])
    close(dpre @ W_ih, bwd["dx"])


# --------------------------------------------------------------------------------------
# float32, the training dtype
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", VARIANTS)
def test_network_float32_matches_float64_reference(cell, num_layers):
    B, T = 3, 4
    rng = np.random.default_rng(210 + num_layers)
    net = make_net(cell, num_layers, dtype=np.float32, seed=5)
    inputs, targets, h0, c0 = random_chunk(rng, B, T, num_layers)
    # The state rounded to float32 first: the reference then sees exactly the same
    # numbers, and only float32 arithmetic separates the two.
    state = {"h": h0.astype(np.float32), "c": c0.astype(np.float32)}
    want = ref.reference_loss_and_grads(cell, params_dict(net), inputs, targets,
                                        state["h"].astype(np.float64),
                                        state["c"].astype(np.float64))
    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = want

    net.grads.flat[:] = np.nan
    loss = net.loss_and_grad(inputs, targets, state)
    close32(loss, want_loss, "loss")
    for name in want_grads:
        assert net.grads[name].dtype == np.float32, name
        close32(net.grads[name], want_grads[name], name)
    ws = net.workspace(T, B)
    close32(ws.dh0, want_dh0, "dh0")
    close32(ws.dc0, want_dc0, "dc0")
    close32(state["h"], want_hT, "final h")
    close32(state["c"], want_cT, "final c")


@pytest.mark.parametrize("cell", VARIANTS)
def test_kernels_float32_saturated(cell):
    """float32 kernels (with their own exp) on pre-activations from tiny to huge (past
    exp's float32 range) stay finite and match the float64 reference on the same
    float32-rounded inputs."""
    T, B = 5, 3
    G = GATES[cell]
    rng = np.random.default_rng(62)
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
    c0 = rng.uniform(-1.5, 1.5, size=(B, H)).astype(f32)
    dhs = rng.normal(size=(T, B, H)).astype(f32)
    dhT, dcT = rng.normal(size=(B, H)).astype(f32), rng.normal(size=(B, H)).astype(f32)
    # The reference takes x and W_ih: an identity W_ih makes x the projection itself.
    args64 = (xproj.astype(np.float64), np.eye(G * H), W_hh.astype(np.float64),
              np.zeros(G * H), np.zeros(G * H))
    hs, cs, tanh_cs = (np.empty((T, B, H), f32) for _ in range(3))
    gates, dpre = np.empty((T, B, G * H), f32), np.empty((T, B, G * H), f32)
    dh, dc = dhT.copy(), dcT.copy()
    if cell == "peephole":
        weights = [rng.uniform(-1.5, 1.5, size=H).astype(f32) for _ in range(3)]
        fwd = ref.peephole_layer_forward(*args64, *(w.astype(np.float64) for w in weights),
                                         h0.astype(np.float64), c0.astype(np.float64))
        bwd = ref.peephole_layer_backward(fwd, dhs.astype(np.float64), dhT, dcT)
        peephole_forward(xproj, W_hh, *weights, h0, c0, hs, cs, gates, tanh_cs)
        peephole_backward(W_hh, *weights, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
    else:
        fwd = ref.cifg_layer_forward(*args64, h0.astype(np.float64), c0.astype(np.float64))
        bwd = ref.cifg_layer_backward(fwd, dhs.astype(np.float64), dhT, dcT)
        cifg_forward(xproj, W_hh, h0, c0, hs, cs, gates, tanh_cs)
        cifg_backward(W_hh, c0, cs, gates, tanh_cs, dhs, dh, dc, dpre)
    outputs = {"hs": hs, "cs": cs, "tanh_cs": tanh_cs, "gates": gates, "dpre": dpre,
               "dh0": dh, "dc0": dc}
    want = dict(fwd, **bwd)
    for name, got in outputs.items():
        assert got.dtype == f32, name
        assert np.all(np.isfinite(got)), name
        close32(got, want[name], name)


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------
SAMPLE_CHARS = "abcdefghij\n"


def sampling_model(cell, num_layers, seed, peephole_scale=1.0):
    """A float32 model in a checkpoint-like object, as Sampler reads it."""
    vocab = Vocab(sorted(SAMPLE_CHARS))
    cfg = TrainConfig(cell=cell, hidden_size=12, num_layers=num_layers)
    params = init_params(cfg, len(vocab), np.random.default_rng(seed))
    for name in params:
        if "weight_c" in name:
            params[name][...] *= peephole_scale
    params["decoder.weight"][...] *= 6.0  # decisive logits: greedy is far from ties
    return types.SimpleNamespace(config=cfg, params=params, vocab=vocab)


def greedy_reference(cell, params, vocab, prime, n, L, tie_check=True):
    """The float64 reference warmed up on ``prime`` from zero state, then n greedy
    characters: (text, final h, final c)."""
    p = {name: np.array(v, np.float64) for name, v in params.items()}
    state = [np.zeros((L, 1, 12)), np.zeros((L, 1, 12))]

    def step(char_id):
        _, logits, state[0], state[1] = ref.reference_forward(cell, p, np.array([[char_id]]),
                                                              *state)
        return logits[0, 0]

    ids = [vocab.index[ch] for ch in prime]
    for char_id in ids[:-1]:
        step(char_id)
    x, out = ids[-1], []
    for _ in range(n):
        logits = step(x)
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] > 1e-3 or not tie_check, "near tie: float32 could flip argmax"
        x = int(np.argmax(logits))
        out.append(vocab.chars[x])
    return "".join(out), state[0], state[1]


@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", VARIANTS)
def test_greedy_sampling_matches_numpy(cell, num_layers):
    """The compiled sampler (one kernel for every cell, by its code) follows the float64
    reference step by step; for the peephole cell with peepholes large enough that a
    sampler ignoring them would write other text."""
    model = sampling_model(cell, num_layers, seed=30 + num_layers, peephole_scale=8.0)
    sampler = Sampler(model)
    rng = np.random.default_rng(0)
    sampler.prime("abc\nde", rng)
    got = "".join(sampler.stream(24, temperature=0.0, top_k=0, rng=rng))
    want, h, c = greedy_reference(cell, model.params, model.vocab, "abc\nde", 24, num_layers)
    assert got == want
    np.testing.assert_allclose(sampler.h, h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sampler.c, c, rtol=1e-4, atol=1e-5)
    if cell == "peephole":
        blind = {name: np.array(v) for name, v in model.params.items()}
        for name in blind:
            if "weight_c" in name:
                blind[name][...] = 0.0
        blind_text = greedy_reference(cell, blind, model.vocab, "abc\nde", 24, num_layers,
                                      tie_check=False)[0]
        assert blind_text != want


@pytest.mark.parametrize("cell", VARIANTS)
def test_cell_step_reads_a_copy_of_the_state_as_the_sampler_does(cell):
    """The sampler calls the cell step with the previous cell state in a copy and the new
    one written to the state array; a step at a time that way gives the forward's states."""
    T, B = 5, 2
    G = GATES[cell]
    rng = np.random.default_rng(71)
    f32 = np.float32
    xproj = rng.normal(size=(T, B, G * H)).astype(f32)
    W_hh = rng.uniform(-0.6, 0.6, size=(G * H, H)).astype(f32)
    h0 = rng.uniform(-0.9, 0.9, size=(B, H)).astype(f32)
    c0 = rng.uniform(-1.5, 1.5, size=(B, H)).astype(f32)
    weights = [rng.uniform(-1, 1, size=H).astype(f32) for _ in range(3)]
    hs, cs, tanh_cs = (np.empty((T, B, H), f32) for _ in range(3))
    gates = np.empty((T, B, G * H), f32)
    if cell == "peephole":
        peephole_forward(xproj, W_hh, *weights, h0, c0, hs, cs, gates, tanh_cs)
    else:
        cifg_forward(xproj, W_hh, h0, c0, hs, cs, gates, tanh_cs)
    h, c = h0.copy(), c0.copy()
    g = np.empty((B, G * H), f32)
    scratch = np.empty((B, H), f32)
    for t in range(T):
        matmul_nt(h, W_hh, g)  # the BLAS the forward calls: bit-identical products
        previous = c.copy()
        if cell == "peephole":
            peephole_step(g, xproj[t], *weights, previous, c, h, scratch)
        else:
            cifg_step(g, xproj[t], previous, c, h, scratch)
        np.testing.assert_array_equal(h, hs[t])
        np.testing.assert_array_equal(c, cs[t])


# --------------------------------------------------------------------------------------
# checkpoints and training end to end
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", VARIANTS)
def test_training_resumes_bit_identically(tmp_path, cell):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(800))
    _, a = assert_resume_is_bit_identical(tmp_path, tiny_config(corpus, cell=cell), n=30)
    ckpt = ckpt_io.load(tmp_path / "split" / "last.npz")
    assert ckpt.config.cell == cell and set(ckpt.state) == {"h", "c"}
    assert "state.c" in a.files
    assert ("rnn.weight_co_l1" in a.files) == (cell == "peephole")
    assert a["metrics"][-1, 2] < a["metrics"][0, 2]  # it learned something

    sampler = Sampler(ckpt_io.load(tmp_path / "whole" / "last.npz"))
    sampler.prime("the ", np.random.default_rng(0))
    text = "".join(sampler.stream(40, 1.0, 0, np.random.default_rng(1)))
    assert len(text) == 40 and set(text) <= set(make_text(800))


TINY = ["--hidden-size", "6", "--num-layers", "2", "--seq-len", "8", "--batch-size", "4",
        "--quiet"]
# --blas auto would time each library on these shapes first, which is most of a tiny run.
PINNED = ["--blas", "openblas", "--step-weights", "stored/stored"]


def test_the_cli_trains_resumes_and_samples_each_variant(tmp_path, small_corpus):
    """Through the installed command, with the step products reading transposed copies
    of weight_hh (pinned: two fresh runs are compared): stopped and resumed is the same
    as never stopped; sample, eval and info read the checkpoints."""
    for cell in VARIANTS:
        args = [*TINY, "--cell", cell, "--blas", "openblas",
                "--step-weights", "transposed/transposed"]
        whole, _ = train_split_and_whole(tmp_path / cell, small_corpus, args, 3)
        info = json.loads(run_cli("info", whole, "--json").stdout)
        assert info["config"]["cell"] == cell
        text = run_cli("sample", whole, "--length", "30", "--seed", "2").stdout
        assert len(text) == 31
        assert 0 < json.loads(run_cli("eval", whole, small_corpus, "--json").stdout)["bpc"] < 8


@pytest.fixture(scope="module")
def peephole_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("peephole")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(3000))
    run_cli("train", corpus, *TINY, *PINNED, "--cell", "peephole", "--steps", "2",
            "--out", root / "run")
    return root / "run" / "last.npz"


def rewrite(src, dst, drop=(), change=None):
    """Copy the .npz ``src`` to ``dst`` without the keys in ``drop`` and with ``change``."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(change or {})
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("key", ["rnn.weight_ci_l0", "rnn.weight_co_l1",
                                 "optim.exp_avg_sq.rnn.weight_cf_l1"])
def test_checkpoint_loading_checks_the_peephole_tensors(peephole_checkpoint, tmp_path, key):
    """Like every parameter, each peephole weight (and its optimizer statistics) must be
    present with its configuration's shape; the loader says which key is wrong."""
    ckpt_io.load(peephole_checkpoint)
    missing = rewrite(peephole_checkpoint, tmp_path / "missing.npz", drop=[key])
    with pytest.raises(CheckpointError, match=f"lacks the key '{key}'"):
        ckpt_io.load(missing)
    wrong = rewrite(peephole_checkpoint, tmp_path / "wrong.npz",
                    change={key: np.zeros(7, np.float32)})
    with pytest.raises(CheckpointError, match=rf"'{key}' is float32\[7\]: expected float32\[6\]"):
        ckpt_io.load(wrong)
    with zipfile.ZipFile(peephole_checkpoint) as z:
        assert f"{key}.npy" in z.namelist()


def test_the_readme_maps_peepholes_to_onnx():
    """README, "Peepholes in ONNX": P = concat(weight_ci, weight_co, weight_cf) and the
    gate blocks reordered i, o, f, c give ONNX's LSTM (its reference implementation) the
    peephole layer's outputs; the state_dict order i, f, o does not. Runs where the onnx
    package is installed (charlstm does not depend on it)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    B, T = 2, 3
    net = make_net("peephole", 1, seed=10)
    p = net.params
    for name in p:
        if "weight_c" in name:
            p[name][...] *= 3.0  # peepholes that matter
    rng = np.random.default_rng(11)
    inputs = rng.integers(0, V, size=(B, T))
    h0, c0 = rng.uniform(-0.9, 0.9, size=(1, B, H)), rng.uniform(-1.5, 1.5, size=(1, B, H))
    hs = net.forward(inputs, {"h": h0.copy(), "c": c0.copy()}).hs[0]

    def iofc(a):
        i, f, g, o = np.split(a, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    feeds = {"X": np.eye(V)[inputs.T], "W": iofc(p["rnn.weight_ih_l0"])[None],
             "R": iofc(p["rnn.weight_hh_l0"])[None],
             "B": np.concatenate([iofc(p["rnn.bias_ih_l0"]), iofc(p["rnn.bias_hh_l0"])])[None],
             "initial_h": h0, "initial_c": c0}

    def tensor(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.DOUBLE, shape)

    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c", "P"],
                            ["Y"], hidden_size=H)
    graph = helper.make_graph([node], "peephole_layer",
                              [tensor(n, a.shape) for n, a in feeds.items()]
                              + [tensor("P", (1, 3 * H))], [tensor("Y", None)])
    model = ReferenceEvaluator(helper.make_model(graph))
    for order, same in ((("ci", "co", "cf"), True), (("ci", "cf", "co"), False)):
        P = np.concatenate([p[f"rnn.weight_{n}_l0"] for n in order])[None]
        (Y,) = model.run(None, dict(feeds, P=P))
        assert np.allclose(Y[:, 0], hs, rtol=1e-12, atol=1e-14) == same, order
