"""bfloat16 products (kernels/bf16.py, mixed.py) against the NumPy twin in reference.py,
which rounds the same operands to bfloat16 (``bf16_round``) and multiplies in float64.

A bfloat16 rounding is a step function: two computations of one float32 value that
differ in the last bit can round to bfloat16 values 2**-8 apart, and over a chunk such
flips cascade (a twin run on its own from the same inputs drifts from the kernels by up
to 1e-3). So every product is checked with the operands the kernels actually had: the
kernels run, and the twin recomputes each product, step and gradient from what they
saved. A product's float32 accumulation then differs from the float64 twin by at most
u * pairs * sum(|a| |b|), u = 2**-24 (one rounding per addition, two per VDPBF16PS).

These tests need AVX512_BF16 and are skipped, with the reason, on a CPU without it.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from charlstm.machine.cpu import bf16_missing

pytestmark = pytest.mark.skipif(bf16_missing() is not None,
                                reason=f"bfloat16 products need AVX512_BF16: {bf16_missing()}")

U32 = 2.0 ** -24  # float32's unit roundoff


def _twin_bound(a, b):
    """How far a float32-accumulated product of the rounded ``a`` and ``b`` may be from
    the float64 twin, elementwise."""
    pairs = -(-a.shape[-1] // 2)
    return 1.01 * (pairs + 1) * U32 * (np.abs(ref.bf16_round(a)) @ np.abs(ref.bf16_round(b))) + 1e-30


def assert_product(got, a, b, what="", slack=0.0):
    """``got`` is a @ b with both operands rounded to bfloat16, to float32 accumulation
    (and ``slack``, elementwise, for float32 work done on it after the product)."""
    want = ref.bf16_matmul(a, b)
    excess = np.abs(np.asarray(got, np.float64) - want) - _twin_bound(a, b) - slack
    assert excess.max() <= 0, f"{what}: off by {excess.max():.3g} beyond the accumulation bound"


def _has_mkl_bf16() -> bool:
    from charlstm.kernels import blas_libraries

    try:
        return blas_libraries.load("mkl").has_bf16
    except blas_libraries.LibraryUnavailable:
        return False


def _bits(values64):
    """float64 values (exactly bfloat16) as their bfloat16 bit patterns."""
    return (np.asarray(values64, np.float32).view(np.uint32) >> 16).astype(np.uint16)


# --------------------------------------------------------------------------------------
# rounding and packing: bit for bit
# --------------------------------------------------------------------------------------
def _awkward_floats(rng, shape):
    """Random normals with the cases rounding gets wrong planted in: ties (even and odd),
    values that round up a binade, the largest float32, infinities, NaN, zeros."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    specials = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3FFFFFFF, 0x7F7FFFFF,
                         0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x80000000,
                         0x00000000, 0x3F7FFF80], np.uint32).view(np.float32)
    flat[:min(len(flat), len(specials))] = specials[:len(flat)]
    return x


def _expected_bits(x):
    rounded = ref.bf16_round(x)
    bits = _bits(rounded)
    nan = np.isnan(x)
    return bits, nan


@pytest.mark.parametrize("m,k", [(5, 12), (3, 7), (1, 1), (9, 64)])
def test_round_rows_is_round_to_nearest_even(m, k):
    from charlstm.kernels.bf16 import pair_buffer, round_rows

    x = _awkward_floats(np.random.default_rng(m * 100 + k), (m, k))
    out = pair_buffer(m, k)
    out[...] = 0xDEADBEEF
    round_rows(x, out)
    halves = out.view(np.uint16)
    want, nan = _expected_bits(x)
    got = halves[:, :k]
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all((got[nan] & 0x7F) != 0), "NaN lost"
    if k % 2:
        assert np.all(halves[:, k] == 0), "the pad of an odd k is not zero"


@pytest.mark.parametrize("k1,k,m", [(3, 8, 5), (0, 7, 4), (4, 4, 3), (1, 1, 2)])
def test_interleave_rows_pairs_consecutive_rows(k1, k, m):
    from charlstm.kernels.bf16 import interleave_rows, pair_count

    x = _awkward_floats(np.random.default_rng(k * 10 + m), (k, m))
    out = np.full((pair_count(k), m), 0xDEADBEEF, np.uint32)
    interleave_rows(x[:k1], x[k1:], out)
    want, nan = _expected_bits(x)
    lo, hi = (out & 0xFFFF).astype(np.uint16), (out >> 16).astype(np.uint16)
    got = np.empty((2 * pair_count(k), m), np.uint16)
    got[0::2], got[1::2] = lo, hi
    assert np.array_equal(got[:k][~nan], want[~nan])
    if k % 2:
        assert np.all(got[k] == 0)


@pytest.mark.parametrize("k,n", [(8, 32), (7, 65), (64, 1024), (1, 3), (33, 40)])
@pytest.mark.parametrize("transpose", [True, False])
def test_pack_panels_holds_the_rounded_operand(k, n, transpose):
    from charlstm.kernels.bf16 import PANEL_WIDTH, pack_panels, pair_count, panel_buffer

    rng = np.random.default_rng(k + n)
    b = rng.standard_normal((k, n)).astype(np.float32)
    weight = np.ascontiguousarray(b.T) if transpose else b
    panels = panel_buffer(k, n)
    panels[...] = 0xDEADBEEF
    pack_panels(weight, panels, transpose)
    pairs = pair_count(k)
    blocks = panels.reshape(-1, pairs, PANEL_WIDTH)
    halves = np.empty((len(blocks), 2 * pairs, PANEL_WIDTH), np.uint16)
    halves[:, 0::2], halves[:, 1::2] = blocks & 0xFFFF, blocks >> 16
    unpacked = np.concatenate(list(halves), axis=1)  # [2 * pairs, panels * width]
    assert np.array_equal(unpacked[:k, :n], _bits(ref.bf16_round(b)))
    assert np.all(unpacked[k:] == 0) and np.all(unpacked[:, n:] == 0), "padding not zero"


# --------------------------------------------------------------------------------------
# the product
# --------------------------------------------------------------------------------------
SHAPES = [(16, 256, 1024), (16, 1024, 256), (1, 3, 5), (5, 7, 33), (13, 40, 160),
          (3, 64, 31), (11, 9, 97), (8, 1, 32), (300, 130, 65)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bf16_product_matches_the_twin_in_every_layout(m, k, n):
    """Rows or interleaved left operand, plain or transposed result; ragged row blocks,
    partial panels and odd k; nothing written past the result."""
    from charlstm.kernels.bf16 import (bf16_product, interleave_rows, pack_panels, pair_count,
                                       pair_buffer, panel_buffer, result_scratch, round_rows)

    rng = np.random.default_rng(m * k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    panels = panel_buffer(k, n)
    pack_panels(np.ascontiguousarray(b.T), panels, True)
    rows = pair_buffer(m, k)
    round_rows(a, rows)
    interleaved = np.empty((pair_count(k), m), np.uint32)
    a_t = np.ascontiguousarray(a.T)
    interleave_rows(a_t[:k // 3], a_t[k // 3:], interleaved)
    results = []
    for left, is_interleaved in ((rows, False), (interleaved, True)):
        for transpose_out in (False, True):
            memory = np.full(m * n + 40, np.nan, np.float32)
            out = memory[:m * n].reshape((n, m) if transpose_out else (m, n))
            bf16_product(left, is_interleaved, panels, out, result_scratch(), transpose_out)
            assert np.isnan(memory[m * n:]).all(), "wrote past the result"
            got = out.T if transpose_out else out
            assert_product(got, a, b, f"{m}x{k}x{n} interleaved={is_interleaved} "
                                      f"transposed={transpose_out}")
            results.append(np.array(got))
    for other in results[1:]:  # one chain of additions, whatever the layout
        assert np.array_equal(other, results[0])


def test_bf16_product_is_not_a_float32_product():
    """The operands really are rounded: the result is the twin's, far from float32's."""
    from charlstm.kernels.bf16 import (bf16_product, pack_panels, pair_buffer, panel_buffer,
                                       result_scratch, round_rows)

    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 256)).astype(np.float32)
    b = rng.standard_normal((256, 64)).astype(np.float32)
    panels, rows = panel_buffer(256, 64), pair_buffer(16, 256)
    pack_panels(b, panels, False)
    round_rows(a, rows)
    out = np.empty((16, 64), np.float32)
    bf16_product(rows, False, panels, out, result_scratch(), False)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(out - ref.bf16_matmul(a, b)).max() < 1e-4
    assert np.abs(out - exact).max() > 1e-2


# --------------------------------------------------------------------------------------
# the cell kernels with bfloat16 step products, step by step
# --------------------------------------------------------------------------------------
CELLS = ("lstm", "peephole", "cifg", "gru", "rnn")


def _step_weights(w_hh, B, forward, kind="panels"):
    """What a cell kernel takes for bfloat16 step products: the (panels, pairs, scratch)
    tuple, or for oneMKL's packed products (packed, pairs, scratch, 0)."""
    from charlstm.kernels.bf16 import pack_panels, pair_buffer, panel_buffer, result_scratch

    GH, H = w_hh.shape
    k, n = (H, GH) if forward else (GH, H)
    if kind == "mkl":
        from charlstm.model.mixed import LowPrecisionWeights

        params = {"rnn.weight_hh_l0": w_hh, "decoder.weight": np.zeros((3, H), np.float32)}
        weights = LowPrecisionWeights(params, 1, "mkl/panels")
        weights.refresh()
        return weights.mkl_packed(0, forward, B), pair_buffer(B, k), result_scratch(), 0
    panels = panel_buffer(k, n)
    pack_panels(w_hh, panels, forward)
    return panels, pair_buffer(B, k), result_scratch()


def _layer(cell, rng, T, B, H):
    G = {"lstm": 4, "peephole": 4, "cifg": 3, "gru": 3, "rnn": 1}[cell]
    f32 = np.float32
    return {
        "xproj": rng.uniform(-1, 1, (T, B, G * H)).astype(f32),
        "w_hh": rng.uniform(-0.5, 0.5, (G * H, H)).astype(f32),
        "peep": [rng.uniform(-0.5, 0.5, H).astype(f32) for _ in range(3)],
        "b_hn": rng.uniform(-0.5, 0.5, H).astype(f32),
        "h0": rng.uniform(-0.9, 0.9, (B, H)).astype(f32),
        "c0": rng.uniform(-1.5, 1.5, (B, H)).astype(f32),
        "dhs": rng.standard_normal((T, B, H)).astype(f32),
        "G": G,
    }


def _run_forward(cell, L, T, B, H, kind="panels"):
    """Run the cell's forward kernel with bfloat16 step weights; returns its outputs."""
    from charlstm.kernels import cifg, gru, lstm, peephole, rnn

    f32 = np.float32
    out = {"hs": np.empty((T, B, H), f32), "cs": np.empty((T, B, H), f32),
           "tanh_cs": np.empty((T, B, H), f32), "gates": np.empty((T, B, L["G"] * H), f32),
           "ghns": np.empty((T, B, H), f32)}
    weights = _step_weights(L["w_hh"], B, True, kind)
    if cell == "lstm":
        lstm.lstm_forward(L["xproj"], weights, L["h0"], L["c0"], out["hs"], out["cs"],
                          out["gates"], out["tanh_cs"])
    elif cell == "peephole":
        peephole.peephole_forward(L["xproj"], weights, *L["peep"], L["h0"], L["c0"], out["hs"],
                                  out["cs"], out["gates"], out["tanh_cs"])
    elif cell == "cifg":
        cifg.cifg_forward(L["xproj"], weights, L["h0"], L["c0"], out["hs"], out["cs"],
                          out["gates"], out["tanh_cs"])
    elif cell == "gru":
        gru.gru_forward(L["xproj"], weights, L["b_hn"], L["h0"], out["hs"], out["gates"],
                        out["ghns"])
    else:
        rnn.rnn_forward(L["xproj"], weights, L["h0"], out["hs"], np.empty((B, H), f32))
    return out


def _twin_step(cell, L, t, out, H):
    """The twin's step t from the kernel's own state before it: a T=1 reference layer
    whose input projection is the kernel's (W_ih = I, no input-side bias) and whose
    recurrent product rounds h_{t-1} and W_hh to bfloat16."""
    GH = L["G"] * H
    x = L["xproj"][t][None].astype(np.float64)
    eye, zero = np.eye(GH), np.zeros(GH)
    h_prev = L["h0"] if t == 0 else out["hs"][t - 1]
    c_prev = L["c0"] if t == 0 else out["cs"][t - 1]
    products = dict(mm=ref.bf16_matmul, mm_in=ref.matmul)
    if cell == "lstm":
        return ref.lstm_layer_forward(x, eye, L["w_hh"], zero, zero, h_prev, c_prev, **products)
    if cell == "peephole":
        return ref.peephole_layer_forward(x, eye, L["w_hh"], zero, zero, *L["peep"], h_prev,
                                          c_prev, **products)
    if cell == "cifg":
        return ref.cifg_layer_forward(x, eye, L["w_hh"], zero, zero, h_prev, c_prev, **products)
    if cell == "gru":  # the kernel adds b_hn inside r * (...), as the twin's b_hh does
        b_hh = np.concatenate([np.zeros(2 * H), L["b_hn"]])
        return ref.gru_layer_forward(x, eye, L["w_hh"], zero, b_hh, h_prev, **products)
    return ref.rnn_layer_forward(x, eye, L["w_hh"], zero, zero, h_prev, **products)


STEP_KINDS = ["panels", pytest.param("mkl", marks=pytest.mark.skipif(
    not _has_mkl_bf16(), reason="oneMKL's bfloat16 GEMM is not installed"))]


@pytest.mark.parametrize("kind", STEP_KINDS)
@pytest.mark.parametrize("cell", CELLS)
def test_cell_forward_with_bf16_step_products_matches_the_twin_step_by_step(cell, kind):
    T, B, H = 6, 5, 40
    L = _layer(cell, np.random.default_rng(len(cell)), T, B, H)
    out = _run_forward(cell, L, T, B, H, kind)
    tol = 2e-6 * H
    for t in range(T):
        twin = _twin_step(cell, L, t, out, H)
        np.testing.assert_allclose(out["hs"][t], twin["hs"][0], rtol=0, atol=tol,
                                   err_msg=f"{cell} h at step {t}")
        if "gates" in twin:
            np.testing.assert_allclose(out["gates"][t], twin["gates"][0], rtol=0, atol=tol,
                                       err_msg=f"{cell} gates at step {t}")
        if "cs" in twin:
            np.testing.assert_allclose(out["cs"][t], twin["cs"][0], rtol=0, atol=tol,
                                       err_msg=f"{cell} c at step {t}")


def _backward_one_step(cell, L, out, t, dh, dc, dpre, drec, weights, H):
    """The cell's backward kernel over step t alone (a T=1 slice), carrying dh, dc in
    place: the same arithmetic as a whole chunk's call, one step of it."""
    from charlstm.kernels import cifg, gru, lstm, peephole, rnn

    sl = slice(t, t + 1)
    c_prev = L["c0"] if t == 0 else out["cs"][t - 1]
    h_prev = L["h0"] if t == 0 else out["hs"][t - 1]
    if cell == "lstm":
        lstm.lstm_backward(weights, c_prev, out["cs"][sl], out["gates"][sl],
                           out["tanh_cs"][sl], L["dhs"][sl], dh, dc, dpre[sl])
    elif cell == "peephole":
        peephole.peephole_backward(weights, *L["peep"], c_prev, out["cs"][sl], out["gates"][sl],
                                   out["tanh_cs"][sl], L["dhs"][sl], dh, dc, dpre[sl])
    elif cell == "cifg":
        cifg.cifg_backward(weights, c_prev, out["cs"][sl], out["gates"][sl],
                           out["tanh_cs"][sl], L["dhs"][sl], dh, dc, dpre[sl])
    elif cell == "gru":
        gru.gru_backward(weights, h_prev, out["hs"][sl], out["gates"][sl], out["ghns"][sl],
                         L["dhs"][sl], dh, dpre[sl], drec[sl], np.empty_like(dh))
    else:
        rnn.rnn_backward(weights, out["hs"][sl], L["dhs"][sl], dh, dpre[sl])


@pytest.mark.parametrize("kind", STEP_KINDS)
@pytest.mark.parametrize("cell", CELLS)
def test_cell_backward_with_bf16_step_products_matches_the_twin_step_by_step(cell, kind):
    """Each step's gradient through the recurrent product is the twin's product of the
    kernel's own dpre_t (drec_t for the GRU) and W_hh, both rounded; and running the
    steps one at a time is the whole chunk's call, bit for bit."""
    T, B, H = 6, 5, 40
    L = _layer(cell, np.random.default_rng(7 * len(cell)), T, B, H)
    out = _run_forward(cell, L, T, B, H, kind)
    GH = L["G"] * H
    weights = _step_weights(L["w_hh"], B, False, kind)
    rng = np.random.default_rng(1)
    dh_T = rng.standard_normal((B, H)).astype(np.float32)
    dc_T = rng.standard_normal((B, H)).astype(np.float32)
    dh, dc = dh_T.copy(), dc_T.copy()
    dpre, drec = np.empty((T, B, GH), np.float32), np.empty((T, B, GH), np.float32)
    for t in range(T - 1, -1, -1):
        dh_in = dh.copy()
        _backward_one_step(cell, L, out, t, dh, dc, dpre, drec, weights, H)
        through = drec[t] if cell == "gru" else dpre[t]
        got, slack = dh.astype(np.float64), 0.0
        if cell == "gru":  # h_{t-1} also reaches h_t directly, weighted by z
            direct = (dh_in.astype(np.float64) + L["dhs"][t]) * out["gates"][t][:, H:2 * H]
            got, slack = got - direct, 4 * U32 * (np.abs(direct) + np.abs(got))
        assert_product(got, through, L["w_hh"], f"{cell} dh at step {t}", slack)
    # The whole chunk in one call gives the same.
    dh_all, dc_all = dh_T.copy(), dc_T.copy()
    dpre_all, drec_all = np.empty_like(dpre), np.empty_like(drec)
    from charlstm.kernels import cifg, gru, lstm, peephole, rnn
    if cell == "lstm":
        lstm.lstm_backward(weights, L["c0"], out["cs"], out["gates"], out["tanh_cs"], L["dhs"],
                           dh_all, dc_all, dpre_all)
    elif cell == "peephole":
        peephole.peephole_backward(weights, *L["peep"], L["c0"], out["cs"], out["gates"],
                                   out["tanh_cs"], L["dhs"], dh_all, dc_all, dpre_all)
    elif cell == "cifg":
        cifg.cifg_backward(weights, L["c0"], out["cs"], out["gates"], out["tanh_cs"], L["dhs"],
                           dh_all, dc_all, dpre_all)
    elif cell == "gru":
        gru.gru_backward(weights, L["h0"], out["hs"], out["gates"], out["ghns"], L["dhs"],
                         dh_all, dpre_all, drec_all, np.empty_like(dh_all))
    else:
        rnn.rnn_backward(weights, out["hs"], L["dhs"], dh_all, dpre_all)
    assert np.array_equal(dpre_all, dpre) and np.array_equal(dh_all, dh)


# --------------------------------------------------------------------------------------
# the network: every chunk product from the operands it saved
# --------------------------------------------------------------------------------------
# charlstm's panels for both; oneMKL's bfloat16 GEMM for both, and each for one role.
PRODUCTS = ["panels/panels"] + [
    pytest.param(kinds, marks=pytest.mark.skipif(not _has_mkl_bf16(),
                                                 reason="oneMKL's bfloat16 GEMM is not installed"))
    for kinds in ("mkl/mkl", "panels/mkl", "mkl/panels")]


def _bf16_network(cell, num_layers, seed=0, V=13, H=40, products="panels/panels"):
    from charlstm.training.config import TrainConfig
    from charlstm.model.network import Network
    from charlstm.model.parameters import init_params

    config = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers, precision="bfloat16",
                         bf16_products=products)
    params = init_params(config, V, np.random.default_rng(seed))
    return Network(config, V, params), V


def _chunk(net, V, B, T, seed):
    rng = np.random.default_rng(seed)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = net.zero_state(B)
    for value in state.values():
        value[...] = rng.uniform(-0.5, 0.5, value.shape)
    return inputs, targets, state


@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("cell", CELLS)
def test_network_forward_products_are_the_twins(cell, products):
    """The upper layer's input projection and the decoder, from the activations the
    forward pass saved; layer 0's input stays a float32 row lookup."""
    net, V = _bf16_network(cell, 2, products=products)
    B, T = 5, 6
    inputs, _, state = _chunk(net, V, B, T, 1)
    net.low_precision_weights.refresh()
    ws = net.forward(inputs, state, None, low_precision=True)
    p = {name: np.asarray(view, np.float64) for name, view in net.params.items()}
    H, N = net.H, B * T
    bias = p["rnn.bias_ih_l1"] + (p["rnn.bias_hh_l1"] if cell != "gru"
                                  else np.concatenate([p["rnn.bias_hh_l1"][:2 * H], np.zeros(H)]))
    # The kernels overwrite xproj with nothing but reads in the forward pass; it holds
    # the projection the recurrence read.
    projection = ws.xproj[1].reshape(N, -1) - bias
    assert_product(projection, ws.hs[0].reshape(N, H), p["rnn.weight_ih_l1"].T,
                   "layer 1 input projection", slack=4 * U32 * np.abs(bias))
    logits = ws.logits - p["decoder.bias"]
    assert_product(logits, ws.hs[1].reshape(N, H), p["decoder.weight"].T, "decoder",
                   slack=4 * U32 * np.abs(p["decoder.bias"]))
    lookup = p["rnn.weight_ih_l0"].T[inputs.T.reshape(-1)] + p["rnn.bias_ih_l0"]
    if cell == "gru":
        lookup[:, :2 * H] += p["rnn.bias_hh_l0"][:2 * H]
    else:
        lookup += p["rnn.bias_hh_l0"]
    np.testing.assert_allclose(ws.xproj[0].reshape(N, -1), lookup, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("cell", CELLS)
def test_network_gradient_products_are_the_twins(cell, products):
    """Every weight gradient and the gradient passed down between layers, from the
    activations and gate gradients the pass saved (one layer for the GRU beside two:
    its drec buffer is shared by the layers)."""
    for num_layers in ((1, 2) if cell != "gru" else (1,)):
        net, V = _bf16_network(cell, num_layers, seed=num_layers, products=products)
        B, T = 4, 7
        inputs, targets, state = _chunk(net, V, B, T, 2)
        h0 = state["h"].copy()
        net.loss_and_grad(inputs, targets, state)
        ws = net.workspace(T, B)
        g = {name: np.asarray(view, np.float64) for name, view in net.grads.items()}
        p = {name: np.asarray(view, np.float64) for name, view in net.params.items()}
        H, N = net.H, B * T
        dlogits = ws.logits
        top = ws.hs[-1].reshape(N, H)
        assert_product(g["decoder.weight"], dlogits.T, top, "decoder.weight")
        np.testing.assert_allclose(g["decoder.bias"], dlogits.astype(np.float64).sum(0),
                                   rtol=1e-5, atol=1e-7)
        for k in range(num_layers):
            dpre = ws.xproj[k].reshape(N, -1)
            drec = ws.drec.reshape(N, -1) if cell == "gru" else dpre
            h_prev = np.concatenate([h0[k], ws.hs[k][:-1].reshape(-1, H)])
            assert_product(g[f"rnn.weight_hh_l{k}"], drec.T, h_prev, f"weight_hh_l{k}")
            if k == 0:
                onehot = ref.onehot(inputs.T.reshape(-1), V)
                np.testing.assert_allclose(g["rnn.weight_ih_l0"], dpre.T.astype(np.float64) @ onehot,
                                           rtol=1e-5, atol=1e-7)
            else:
                below = ws.hs[k - 1].reshape(N, H)
                assert_product(g[f"rnn.weight_ih_l{k}"], dpre.T, below, f"weight_ih_l{k}")
        if num_layers == 2:  # what layer 1 passed down to layer 0
            dpre1 = ws.xproj[1].reshape(N, -1)
            assert_product(ws.dhs.reshape(N, H), dpre1, p["rnn.weight_ih_l1"], "dx of layer 1")


@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("cell", CELLS)
def test_network_drifts_from_its_twin_no_more_than_rounding_flips_allow(cell, products):
    """The whole pass against the twin run on its own: any miswired product is an error
    of order 1; rounding flips cascading over a chunk stay far below it (and through
    the step products, which the forward products' test reaches only via h)."""
    net, V = _bf16_network(cell, 2, seed=5, products=products)
    B, T = 4, 7
    inputs, targets, state = _chunk(net, V, B, T, 3)
    h0 = state["h"].astype(np.float64)
    c0 = state["c"].astype(np.float64) if "c" in state else None
    params = {name: np.asarray(view, np.float64) for name, view in net.params.items()}
    loss = net.loss_and_grad(inputs, targets, state)
    want_loss, want, *_ = ref.reference_loss_and_grads(cell, params, inputs, targets, h0, c0,
                                                        mm=ref.bf16_matmul)
    assert abs(loss - want_loss) < 1e-3
    for name, value in want.items():
        scale = np.abs(value).max() + 1e-12
        assert np.abs(net.grads[name] - value).max() < 0.02 * scale, name


def test_low_precision_is_only_for_training_passes():
    """Evaluation (loss_sum) of a bfloat16 network is the float32 network's, bit for bit."""
    from charlstm.training.config import TrainConfig
    from charlstm.model.network import Network

    net, V = _bf16_network("lstm", 2)
    inputs, targets, state = _chunk(net, V, 1, 9, 4)
    twin32 = Network(TrainConfig(hidden_size=net.H, num_layers=2), V, net.params)
    s1 = {k: v.copy() for k, v in state.items()}
    s2 = {k: v.copy() for k, v in state.items()}
    assert net.loss_sum(inputs, targets, s1) == twin32.loss_sum(inputs, targets, s2)
