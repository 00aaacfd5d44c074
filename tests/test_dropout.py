"""Dropout: the mask kernel, the masked network against its NumPy twin, its gradient
against finite differences under a fixed mask, and how training draws the masks."""
from __future__ import annotations

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.model.dropout import DropoutMasks
from charlstm.model.parameters import init_params
from charlstm.model.network import Network
from charlstm.training.loop import Trainer, prepare_data

import reference as ref
from conftest import make_text, tiny_config, train
from finite_differences import REL_TOL, central_differences, rel_error

V, H = 6, 4


def fixed_masks(rng, p, L, T, B, dtype=np.float64):
    """Masks made the plain way, independent of charlstm's kernel: keep with 1 - p, scale."""
    keep = rng.random((L, T, B, H)) >= p
    return (keep / (1.0 - p)).astype(dtype)


def make_problem(cell, L, B, T, dtype=np.float64, seed=0):
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L)
    params = init_params(config, V, np.random.default_rng(seed), dtype=np.float64).astype(dtype)
    net = Network(config, V, params)
    rng = np.random.default_rng(seed + 1)
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    state = {"h": rng.uniform(-0.9, 0.9, size=(L, B, H))}
    if cell == "lstm":
        state["c"] = rng.uniform(-1.5, 1.5, size=(L, B, H))
    state = {k: v.astype(dtype) for k, v in state.items()}
    return net, inputs, targets, state


def as_ref(net, state):
    params = {name: np.array(view, np.float64) for name, view in net.params.items()}
    c0 = state["c"].astype(np.float64) if "c" in state else None
    return params, state["h"].astype(np.float64), c0


# -- the mask ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_are_zero_or_scaled_and_keep_one_minus_p(p, dtype):
    dm = DropoutMasks(p, 2, 16, 8, 64, dtype)
    rng = np.random.default_rng(3)
    draws = rng.bit_generator.state
    masks = dm.draw(rng).copy()
    assert masks.dtype == dtype and masks.shape == (2, 16, 8, 64)
    scale = dtype(1.0 / (1.0 - p))
    assert np.all((masks == 0) | (masks == scale))
    kept = np.mean(masks != 0)
    n = masks.size
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 5 sigma of a binomial
    # The same generator state gives the same masks; the next draw gives new ones.
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = draws
    uniform = rng2.random(masks.shape, dtype=dtype)
    np.testing.assert_array_equal(masks, np.where(uniform >= p, scale, dtype(0)))
    assert not np.array_equal(dm.draw(rng), masks)


def test_mask_probability_must_be_in_the_open_interval():
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            DropoutMasks(p, 1, 2, 2, 2)


# -- the masked network against the NumPy twin --------------------------------------------

CASES = [(cell, L) for cell in ("lstm", "rnn", "gru") for L in (1, 2, 3)]


@pytest.mark.parametrize("cell,L", CASES, ids=[f"{c}-L{n}" for c, n in CASES])
def test_masked_network_matches_reference(cell, L):
    B, T = 3, 5
    net, inputs, targets, state = make_problem(cell, L, B, T, seed=L)
    masks = fixed_masks(np.random.default_rng(7), 0.4, L, T, B)
    params, h0, c0 = as_ref(net, state)
    want_loss, want_grads, want_dh0, want_dc0, want_hT, want_cT = ref.reference_loss_and_grads(
        cell, params, inputs, targets, h0, c0, masks=list(masks))
    net.grads.flat[:] = np.nan
    loss = net.loss_and_grad(inputs, targets, state, masks)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    for name, want in want_grads.items():
        np.testing.assert_allclose(net.grads[name], want, rtol=1e-10, atol=1e-13, err_msg=name)
    ws = net.workspace(T, B)
    np.testing.assert_allclose(ws.dh0, want_dh0, rtol=1e-10, atol=1e-13)
    # The carried state is the unmasked one: dropout never touches the recurrence.
    np.testing.assert_allclose(state["h"], want_hT, rtol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(ws.dc0, want_dc0, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(state["c"], want_cT, rtol=1e-12)
    # Without masks, the reference without dropout; the masks made a difference.
    _, _, _, state2 = make_problem(cell, L, B, T, seed=L)
    plain = net.loss_and_grad(inputs, targets, state2)
    want_plain = ref.reference_loss_and_grads(cell, params, inputs, targets, h0, c0)[0]
    np.testing.assert_allclose(plain, want_plain, rtol=1e-12)
    assert abs(plain - loss) > 1e-6


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_masked_network_float32(cell):
    B, T, L = 3, 5, 2
    net, inputs, targets, state = make_problem(cell, L, B, T, dtype=np.float32, seed=4)
    masks = fixed_masks(np.random.default_rng(8), 0.3, L, T, B, np.float32)
    params, h0, c0 = as_ref(net, state)
    want_loss, want_grads, *_ = ref.reference_loss_and_grads(
        cell, params, inputs, targets, h0, c0, masks=list(masks.astype(np.float64)))
    loss = net.loss_and_grad(inputs, targets, state, masks)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name, want in want_grads.items():
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(net.grads[name], want, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=name)


def test_all_ones_mask_is_exactly_no_dropout():
    B, T, L = 2, 4, 2
    net, inputs, targets, state = make_problem("lstm", L, B, T, dtype=np.float32)
    s1 = {k: v.copy() for k, v in state.items()}
    loss1 = net.loss_and_grad(inputs, targets, s1, np.ones((L, T, B, H), np.float32))
    g1 = net.grads.flat.copy()
    loss2 = net.loss_and_grad(inputs, targets, state)
    assert loss1 == loss2
    np.testing.assert_array_equal(g1, net.grads.flat)


# -- gradient under a fixed mask against finite differences ----------------------------------

@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
def test_masked_gradient_matches_finite_differences(cell):
    """Every entry of every parameter and of the initial state, float64, eps 1e-6, under
    one fixed mask that zeroes about half of each layer's outputs."""
    B, T, L = 2, 3, 2
    net, inputs, targets, state0 = make_problem(cell, L, B, T, seed=11)
    masks = fixed_masks(np.random.default_rng(12), 0.5, L, T, B)
    assert 0 < np.count_nonzero(masks) < masks.size

    def fresh():
        return {k: v.copy() for k, v in state0.items()}

    net.loss_and_grad(inputs, targets, fresh(), masks)
    ws = net.workspace(T, B)
    analytic = {name: g.copy() for name, g in net.grads.items()}
    analytic["h0"] = ws.dh0.copy()
    tensors = {name: net.params[name] for name in net.params}
    tensors["h0"] = state0["h"]
    if cell == "lstm":
        analytic["c0"] = ws.dc0.copy()
        tensors["c0"] = state0["c"]
    def mean_loss():
        return net.loss_sum(inputs, targets, fresh(), masks) / (B * T)

    for name, arr in tensors.items():
        err = rel_error(central_differences(arr, mean_loss), analytic[name])
        assert err < REL_TOL, f"{cell} {name}: relative error {err:.2e}"


def test_finite_differences_see_a_mask_the_gradient_ignores():
    """Power: the gradient of the unmasked network is far from the masked finite differences."""
    B, T, L = 2, 3, 2
    net, inputs, targets, state0 = make_problem("lstm", L, B, T, seed=11)
    masks = fixed_masks(np.random.default_rng(12), 0.5, L, T, B)
    net.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state0.items()})
    wrong = net.grads["decoder.weight"].copy()
    net.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state0.items()}, masks)
    right = net.grads["decoder.weight"].copy()
    assert rel_error(wrong, right) > 1e-2


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reference_with_masks_matches_finite_differences(cell):
    """The twin itself, on its own loss, so the comparison above is against something right."""
    B, T, L = 2, 3, 2
    net, inputs, targets, state0 = make_problem(cell, L, B, T, seed=21)
    masks = list(fixed_masks(np.random.default_rng(22), 0.5, L, T, B))
    params, h0, c0 = as_ref(net, state0)
    _, grads, dh0, _, _, _ = ref.reference_loss_and_grads(cell, params, inputs, targets, h0, c0,
                                                          masks=masks)
    def mean_loss():
        return ref.reference_loss_sum(cell, params, inputs, targets, h0, c0, masks) / (B * T)

    for name, arr in dict(params, h0=h0).items():
        want = dh0 if name == "h0" else grads[name]
        assert rel_error(central_differences(arr, mean_loss), want) < REL_TOL, name


# -- training -------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000))
    return path


def params_after(config, out):
    trainer = train(config, out)
    return trainer.net.params.flat.copy()


def test_training_with_dropout_is_reproducible_under_the_seed(tmp_path, corpus):
    config = tiny_config(corpus, dropout=0.3, steps=6)
    a = params_after(config, tmp_path / "a")
    b = params_after(config, tmp_path / "b")
    np.testing.assert_array_equal(a, b)
    other_seed = params_after(config.replace(seed=1), tmp_path / "c")
    assert not np.array_equal(a, other_seed)
    no_dropout = params_after(config.replace(dropout=0.0), tmp_path / "d")
    assert not np.array_equal(a, no_dropout)


def test_dropout_draws_change_every_step_and_spare_the_initialisation(corpus):
    """The initial weights do not depend on dropout (masks are drawn after them), and
    each step draws a fresh mask."""
    config = tiny_config(corpus, dropout=0.5, steps=2)
    data = prepare_data(config)
    with_dropout = Trainer(config, data)
    without = Trainer(config.replace(dropout=0.0), data)
    np.testing.assert_array_equal(with_dropout.net.params.flat, without.net.params.flat)
    first = with_dropout.dropout.draw(with_dropout.rng).copy()
    second = with_dropout.dropout.draw(with_dropout.rng).copy()
    assert not np.array_equal(first, second)


def test_validation_is_without_dropout_and_draws_nothing(corpus):
    config = tiny_config(corpus, dropout=0.5, steps=2)
    data = prepare_data(config)
    trainer = Trainer(config, data)
    trainer.train_step()
    before = trainer.rng.bit_generator.state
    v1, v2 = trainer.validate(), trainer.validate()
    assert v1 == v2
    assert trainer.rng.bit_generator.state == before
    plain = Trainer(config.replace(dropout=0.0), data)
    plain.net.params.flat[...] = trainer.net.params.flat
    assert plain.validate() == v1
