"""The GRU cell (``--cell gru``, PyTorch's ``nn.GRU``): kernels, network, gradients,
PyTorch parity, sampling and a training run, each against an independent computation.

The GRU differs from the LSTM and the RNN in one place that every test here leans on:
bias_hh's candidate rows sit inside ``r * (h W_hn^T + b_hn)``, so bias_ih and bias_hh
have different gradients. The parameters are initialised so that the two biases are not
equal, otherwise a network that summed them would pass the forward checks.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from charlstm.model import checkpoint as ckpt_io
from charlstm.training.config import CELLS, GATES, TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.kernels.blas import matmul_nt
from charlstm.kernels.gru import gru_backward, gru_forward, gru_step
from charlstm.model.parameters import init_params, param_shapes
from charlstm.model.network import Network
from charlstm.model.sample import Sampler

from conftest import assert_resume_is_bit_identical, make_text, tiny_config

import reference as ref
from finite_differences import EPS, REL_TOL, central_differences, rel_error

RTOL = 1e-10  # float64 kernels vs float64 reference
ATOL = 1e-13  # for entries that are (nearly) zero, where a relative bound means nothing
RTOL32 = 1e-4
V, H = 7, 5

def close(got, want, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)


def close32(got, want, what):
    """|got - want| <= RTOL32 * (|want| + max|want|) elementwise (as in test_kernels)."""
    got = np.asarray(got, np.float64)
    scale = np.max(np.abs(want)) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32 * scale, err_msg=what)


def config(num_layers, hidden=H):
    return TrainConfig(cell="gru", hidden_size=hidden, num_layers=num_layers)


def make_net(num_layers, dtype=np.float64, seed=0, vocab=V, hidden=H):
    cfg = config(num_layers, hidden)
    params = init_params(cfg, vocab, np.random.default_rng(seed), dtype=np.float64)
    if dtype != np.float64:
        params = params.astype(dtype)
    return Network(cfg, vocab, params)


def random_chunk(rng, B, T, L):
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    h0 = rng.uniform(-0.9, 0.9, size=(L, B, H))
    return inputs, targets, h0


def params_dict(net):
    return {name: np.array(view, np.float64) for name, view in net.params.items()}


def test_gru_is_a_cell():
    assert "gru" in CELLS and GATES["gru"] == 3
    shapes = param_shapes(config(2), V)
    assert shapes["rnn.weight_ih_l0"] == (3 * H, V)
    assert shapes["rnn.weight_hh_l1"] == (3 * H, H)
    assert shapes["rnn.bias_hh_l1"] == (3 * H,)
    assert set(make_net(1).zero_state(2)) == {"h"}


# --------------------------------------------------------------------------------------
# (a) whole network, float64, against the reference
# --------------------------------------------------------------------------------------
SHAPES = [(3, 4), (3, 1), (1, 4)]  # (B, T); T=1 and B=1 are the edge cases


@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
def test_network_matches_reference(num_layers, B, T):
    rng = np.random.default_rng(300 + 10 * num_layers + T)
    net = make_net(num_layers, seed=num_layers)
    inputs, targets, h0 = random_chunk(rng, B, T, num_layers)
    p = params_dict(net)
    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = ref.reference_loss_and_grads(
        "gru", p, inputs, targets, h0)
    assert want_dc0 is None and want_cT is None
    # The n rows of the two bias gradients differ (by the factor r): the test can tell a
    # network that treats them as one bias from a correct one.
    for k in range(num_layers):
        db_ih, db_hh = want_grads[f"rnn.bias_ih_l{k}"], want_grads[f"rnn.bias_hh_l{k}"]
        assert np.array_equal(db_ih[:2 * H], db_hh[:2 * H])
        assert np.max(np.abs(db_ih[2 * H:] - db_hh[2 * H:])) > 1e-4

    state = {"h": h0.copy()}
    net.grads.flat[:] = np.nan  # every gradient entry must be written, none accumulated
    loss = net.loss_and_grad(inputs, targets, state)
    close(loss, want_loss, what="loss")
    assert set(net.grads) == set(want_grads) == set(param_shapes(config(num_layers), V))
    for name in want_grads:
        assert net.grads[name].shape == want_grads[name].shape, name
        close(net.grads[name], want_grads[name], what=name)
    ws = net.workspace(T, B)
    close(ws.dh0, want_dh0, what="dh0")
    close(state["h"], want_hT, what="final h")
    assert set(state) == {"h"}

    # The no-gradient pass: summed loss, same carried state.
    state2 = {"h": h0.copy()}
    loss_sum = net.loss_sum(inputs, targets, state2)
    close(loss_sum, ref.reference_loss_sum("gru", p, inputs, targets, h0), what="summed loss")
    close(state2["h"], want_hT, what="final h (loss)")


def test_network_repeated_calls_and_carried_state():
    """Reused workspaces and gradients overwrite, never accumulate; the carried state
    feeds the next chunk exactly as the reference's final state does."""
    L = 2
    rng = np.random.default_rng(7)
    net = make_net(L, seed=3)
    inputs, targets, h0 = random_chunk(rng, 3, 4, L)
    p = params_dict(net)

    loss1 = net.loss_and_grad(inputs, targets, {"h": h0.copy()})
    grads1 = net.grads.flat.copy()
    dh01 = net.workspace(4, 3).dh0.copy()
    other_in, other_tg, oh0 = random_chunk(rng, 2, 5, L)
    net.loss_and_grad(other_in, other_tg, {"h": oh0})
    net.loss_sum(inputs, targets, {"h": h0.copy()})
    loss2 = net.loss_and_grad(inputs, targets, {"h": h0.copy()})
    assert loss2 == loss1
    np.testing.assert_array_equal(net.grads.flat, grads1)
    np.testing.assert_array_equal(net.workspace(4, 3).dh0, dh01)

    in2, tg2, _ = random_chunk(rng, 3, 4, L)
    state = {"h": h0.copy()}
    net.loss_and_grad(inputs, targets, state)
    loss_b = net.loss_and_grad(in2, tg2, state)
    hT = ref.reference_loss_and_grads("gru", p, inputs, targets, h0)[4]
    want = ref.reference_loss_and_grads("gru", p, in2, tg2, hT)
    close(loss_b, want[0], what="loss of chunk 2")
    for name in want[1]:
        close(net.grads[name], want[1][name], what=name)
    close(net.workspace(4, 3).dh0, want[2], what="dh0 of chunk 2")
    close(state["h"], want[4], what="final h after chunk 2")


# --------------------------------------------------------------------------------------
# (b) the kernels one at a time
# --------------------------------------------------------------------------------------
def layer_inputs(rng, T, B, D):
    x = rng.normal(size=(T, B, D))
    W_ih = rng.uniform(-0.6, 0.6, size=(3 * H, D))
    W_hh = rng.uniform(-0.6, 0.6, size=(3 * H, H))
    b_ih = rng.uniform(-0.5, 0.5, size=3 * H)
    b_hh = rng.uniform(-0.5, 0.5, size=3 * H)
    h0 = rng.uniform(-0.9, 0.9, size=(B, H))
    return x, W_ih, W_hh, b_ih, b_hh, h0


def kernel_xproj(x, W_ih, b_ih, b_hh):
    """The input projection the kernels expect: bias_ih plus bias_hh's r, z rows only."""
    bias = b_ih.copy()
    bias[:2 * H] += b_hh[:2 * H]
    return np.ascontiguousarray(x @ W_ih.T + bias)


@pytest.mark.parametrize("T", [4, 1])
def test_gru_kernels(T):
    B, D = 3, 6
    rng = np.random.default_rng(31 + T)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D)
    fwd = ref.gru_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0)

    xproj = kernel_xproj(x, W_ih, b_ih, b_hh)
    b_hn = b_hh[2 * H:].copy()
    inputs_before = [a.copy() for a in (xproj, W_hh, b_hn, h0)]
    hs = np.full((T, B, H), np.nan)
    gates = np.full((T, B, 3 * H), np.nan)
    ghns = np.full((T, B, H), np.nan)
    gru_forward(xproj, W_hh, b_hn, h0, hs, gates, ghns)
    for before, after in zip(inputs_before, (xproj, W_hh, b_hn, h0)):
        np.testing.assert_array_equal(after, before)
    close(hs, fwd["hs"], what="hs")
    close(gates, fwd["gates"], what="gates")
    close(ghns, fwd["ghn"], what="ghn")

    # Non-zero gradient arriving at the final state too, not only from above.
    dhs = rng.normal(size=(T, B, H))
    dhT = rng.normal(size=(B, H))
    bwd = ref.gru_layer_backward(fwd, dhs, dhT)
    dh = dhT.copy()
    dpre = np.full((T, B, 3 * H), np.nan)
    drec = np.full((T, B, 3 * H), np.nan)
    scratch = np.full((B, H), np.nan)  # stale contents must not leak in
    saved = [a.copy() for a in (W_hh, h0, hs, gates, ghns, dhs)]
    gru_backward(W_hh, h0, hs, gates, ghns, dhs, dh, dpre, drec, scratch)
    for before, after in zip(saved, (W_hh, h0, hs, gates, ghns, dhs)):
        np.testing.assert_array_equal(after, before)
    close(dpre, bwd["dpre"], what="dpre")
    close(drec, bwd["drec"], what="drec")
    close(dh, bwd["dh0"], what="dh0")


def test_gru_kernels_float32_and_in_place_state():
    """The float32 build (the training dtype) agrees with the float64 twin to float32
    accuracy; and gru_step with h_prev and h the same array (how the sampler calls it,
    through gru_forward's T=1 case here) gives the same state."""
    T, B, D = 5, 2, 4
    rng = np.random.default_rng(61)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D)
    args32 = [a.astype(np.float32) for a in (x, W_ih, W_hh, b_ih, b_hh, h0)]
    fwd = ref.gru_layer_forward(*[a.astype(np.float64) for a in args32])
    x32, W_ih32, W_hh32, b_ih32, b_hh32, h032 = args32
    xproj = kernel_xproj(x32, W_ih32, b_ih32, b_hh32).astype(np.float32)
    hs = np.empty((T, B, H), np.float32)
    gates = np.empty((T, B, 3 * H), np.float32)
    ghns = np.empty((T, B, H), np.float32)
    gru_forward(xproj, W_hh32, b_hh32[2 * H:].copy(), h032, hs, gates, ghns)
    close32(hs, fwd["hs"], "float32 hs")

    h = h032.copy()
    g = np.empty((B, 3 * H), np.float32)
    for t in range(T):
        matmul_nt(h, W_hh32, g)  # the BLAS gru_forward calls: bit-identical products
        gru_step(g, xproj[t], b_hh32[2 * H:].copy(), h, h, np.empty((B, H), np.float32))
        np.testing.assert_array_equal(h, hs[t])


def test_reference_bias_gradients_follow_from_dpre_and_drec():
    """The contract the network relies on: every weight and bias gradient is one GEMM
    (or sum) of the kernel outputs dpre / drec over all rows."""
    T, B, D = 4, 3, 6
    rng = np.random.default_rng(71)
    x, W_ih, W_hh, b_ih, b_hh, h0 = layer_inputs(rng, T, B, D)
    fwd = ref.gru_layer_forward(x, W_ih, W_hh, b_ih, b_hh, h0)
    bwd = ref.gru_layer_backward(fwd, rng.normal(size=(T, B, H)))
    dpre, drec = bwd["dpre"], bwd["drec"]
    close(np.einsum("tbg,tbd->gd", dpre, x), bwd["dW_ih"])
    close(np.einsum("tbg,tbh->gh", drec, fwd["h_prev"]), bwd["dW_hh"])
    close(dpre.sum(axis=(0, 1)), bwd["db_ih"])
    close(drec.sum(axis=(0, 1)), bwd["db_hh"])
    close(dpre @ W_ih, bwd["dx"])
    close(drec[..., :2 * H], dpre[..., :2 * H])
    r = fwd["gates"][..., :H]
    close(drec[..., 2 * H:], r * dpre[..., 2 * H:])


# --------------------------------------------------------------------------------------
# (c) central finite differences (the method and bound of test_gradcheck.py, where the
#     GRU twin's own check is one case of test_reference_matches_finite_differences)
# --------------------------------------------------------------------------------------
GC_V, GC_H = 5, 3
GC_CASES = [(1, 2, 3), (2, 2, 3), (2, 2, 1)]  # (num_layers, B, T)


class GradProblem:
    def __init__(self, num_layers, B, T, seed=0):
        self.B, self.T = B, T
        cfg = TrainConfig(cell="gru", hidden_size=GC_H, num_layers=num_layers)
        params = init_params(cfg, GC_V, np.random.default_rng(seed), dtype=np.float64)
        self.net = Network(cfg, GC_V, params)
        rng = np.random.default_rng(seed + 1)
        self.inputs = rng.integers(0, GC_V, size=(B, T))
        self.targets = rng.integers(0, GC_V, size=(B, T))
        self.h0 = rng.uniform(-0.9, 0.9, size=(num_layers, B, GC_H))
        self.loss = self.net.loss_and_grad(self.inputs, self.targets, {"h": self.h0.copy()})
        self.analytic = {name: g.copy() for name, g in self.net.grads.items()}
        self.analytic["h0"] = self.net.workspace(T, B).dh0.copy()
        self.names = list(self.analytic)

    def mean_loss(self):
        return self.net.loss_sum(self.inputs, self.targets, {"h": self.h0.copy()}) / (self.B * self.T)

    def finite_difference(self, name, eps=EPS):
        arr = self.h0 if name == "h0" else self.net.params[name]
        return central_differences(arr, self.mean_loss, eps)


@pytest.mark.parametrize("case", GC_CASES, ids=[f"L{c[0]}-B{c[1]}T{c[2]}" for c in GC_CASES])
def test_gradient_matches_finite_differences(case):
    pb = GradProblem(*case)
    assert len(pb.names) == 4 * case[0] + 3  # every parameter tensor and h0
    errors = {}
    for name in pb.names:
        fd = pb.finite_difference(name)
        an = pb.analytic[name]
        assert an.shape == fd.shape and np.all(np.isfinite(an)), name
        errors[name] = rel_error(fd, an)
    bad = {n: f"{e:.3e}" for n, e in errors.items() if not e < REL_TOL}
    assert not bad, f"relative errors above {REL_TOL}: {bad}"
    # the perturbations were all undone
    np.testing.assert_allclose(pb.mean_loss(), pb.loss, rtol=1e-14)


# (d) the float32 network against the float64 reference and (e) PyTorch parity are cases
# of tests/test_kernels.py and tests/test_torch_parity.py.

# --------------------------------------------------------------------------------------
# (f) sampling
# --------------------------------------------------------------------------------------
SAMPLE_CHARS = "abcdefghij\n"


def sampling_model(num_layers, seed):
    """A float32 gru model in a checkpoint-like object, as Sampler reads it. The biases
    are spread wider than the default init so that bias_hh's n rows matter."""
    vocab = Vocab(sorted(SAMPLE_CHARS))
    cfg = TrainConfig(cell="gru", hidden_size=12, num_layers=num_layers)
    params = init_params(cfg, len(vocab), np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 100)
    for k in range(num_layers):
        params[f"rnn.bias_hh_l{k}"][...] = rng.uniform(-1.5, 1.5, 3 * 12)
    params["decoder.weight"][...] *= 6.0  # decisive logits: greedy is far from ties
    return types.SimpleNamespace(config=cfg, params=params, vocab=vocab)


def reference_logits(params, char_id, h):
    """One step of the float64 reference from state h [L, 1, H]: (logits [V], new h)."""
    _, logits, hT, _ = ref.reference_forward("gru", params, np.array([[char_id]]), h)
    return logits[0, 0], hT


@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
def test_greedy_sampling_matches_numpy(num_layers):
    model = sampling_model(num_layers, seed=20 + num_layers)
    p = {n: np.array(v, np.float64) for n, v in model.params.items()}
    sampler = Sampler(model)
    prime = "abc\nde"
    rng = np.random.default_rng(0)
    sampler.prime(prime, rng)
    got = "".join(sampler.stream(20, temperature=0.0, top_k=0, rng=rng))

    h = np.zeros((num_layers, 1, 12))
    ids = [model.vocab.index[ch] for ch in prime]
    for i in ids[:-1]:
        _, h = reference_logits(p, i, h)
    x, want = ids[-1], []
    for _ in range(20):
        logits, h = reference_logits(p, x, h)
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] > 1e-3, "near tie: float32 rounding could flip argmax"
        x = int(np.argmax(logits))
        want.append(model.vocab.chars[x])
    assert got == "".join(want)
    np.testing.assert_allclose(sampler.h, h, rtol=1e-4, atol=1e-5)


def test_sampling_at_temperature_draws_from_the_same_distribution():
    """With the uniforms the sampler will use, the reference's inverse CDF of
    softmax(logits / temperature) picks the same characters."""
    num_layers, temperature, n = 2, 0.8, 30
    model = sampling_model(num_layers, seed=5)
    p = {name: np.array(v, np.float64) for name, v in model.params.items()}
    sampler = Sampler(model)
    sampler.prime("ja", np.random.default_rng(0))
    got = "".join(sampler.stream(n, temperature, top_k=0, rng=np.random.default_rng(42)))
    uniforms = np.random.default_rng(42).random(n)  # what stream drew (one chunk)

    h = np.zeros((num_layers, 1, 12))
    _, h = reference_logits(p, model.vocab.index["j"], h)
    x, want = model.vocab.index["a"], []
    for u in uniforms:
        logits, h = reference_logits(p, x, h)
        z = (logits - logits.max()) / temperature
        cdf = np.cumsum(np.exp(z))
        cdf /= cdf[-1]
        assert np.min(np.abs(cdf - u)) > 1e-4, "u on a CDF boundary: float32 could flip it"
        x = int(np.searchsorted(cdf, u, side="right"))
        want.append(model.vocab.chars[x])
    assert got == "".join(want)


# --------------------------------------------------------------------------------------
# (g) training end to end: resume is bit-identical, and sampling a trained checkpoint
# --------------------------------------------------------------------------------------
def test_training_resumes_bit_identically(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(800))
    whole, a = assert_resume_is_bit_identical(tmp_path, tiny_config(corpus, cell="gru"), n=30)
    ckpt = ckpt_io.load(tmp_path / "split" / "last.npz")
    assert ckpt.config.cell == "gru" and set(ckpt.state) == {"h"}
    assert "state.c" not in a.files
    # it learned something: the last logged training bpc is below the first
    assert a["metrics"][-1, 2] < a["metrics"][0, 2]

    # The trained checkpoint samples through the compiled kernel like any other cell.
    sampler = Sampler(ckpt_io.load(tmp_path / "whole" / "last.npz"))
    sampler.prime("the ", np.random.default_rng(0))
    text = "".join(sampler.stream(40, 1.0, 0, np.random.default_rng(1)))
    assert len(text) == 40 and set(text) <= set(make_text(800))
