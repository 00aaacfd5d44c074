"""Central finite differences of the network's mean loss against its analytic gradients.

For every entry of every parameter tensor (the peephole cell's diagonal weights
included), and of the initial state h0 (and c0 for the LSTM family), the loss
``net.loss_sum(inputs, targets, fresh copy of the state) / (B*T)`` is evaluated at +eps
and -eps (float64) and

    fd = (loss(+eps) - loss(-eps)) / (2 eps)

is compared with ``net.loss_and_grad`` (``net.grads[name]``, ``workspace.dh0/.dc0``).

Error measure, per tensor (documented choice): the norm-based relative error

    rel = ||fd - analytic||_2 / max(||fd||_2 + ||analytic||_2, 1e-300)

which is scale-free, is not dominated by entries that are (near) zero, and is <= 1.
The bound is REL_TOL = 1e-6. With eps = 1e-6 the truncation error is O(eps^2) ~ 1e-12
and the rounding error about 1e-16 * |loss| / eps ~ 1e-10 per entry, so a correct
gradient gives rel between ~1e-10 and ~3e-7 here; the worst are the tensors with the
smallest gradients: the peephole cell's layer-0 weight_co at T=1, gradient norm ~3e-4
(rel 3.0e-7, ~3x margin; 2e-8 with eps = 1e-5), and of the LSTM's, layer-0 weight_hh
with 2 layers, gradient norm ~2e-3 (rel 1.3e-7, ~8x margin). eps = 1e-5 would be about
10x more accurate still, eps = 1e-7 is already at the bound (rounding dominates): see
test_eps_is_in_the_sweet_spot. A gradient off by one part in a thousand gives rel ~ 5e-4
(see test_gradcheck_has_power).
"""
from __future__ import annotations

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.model.parameters import init_params, param_shapes
from charlstm.model.network import Network

import reference as ref
from finite_differences import EPS, REL_TOL, central_differences, rel_error

V, H = 5, 3


CASES = [  # (cell, num_layers, B, T)
    ("lstm", 1, 2, 3),
    ("lstm", 2, 2, 3),
    ("rnn", 1, 2, 3),
    ("rnn", 2, 2, 3),
    ("lstm", 2, 2, 1),  # T=1: the recurrent weight's gradient comes from h0 alone
    ("rnn", 2, 2, 1),
    ("peephole", 1, 2, 3),
    ("peephole", 2, 2, 3),
    ("peephole", 2, 2, 1),  # T=1: weight_co's gradient comes from c_1, the others' from c0
    ("cifg", 1, 2, 3),
    ("cifg", 2, 2, 3),
    ("cifg", 2, 2, 1),
]


def case_id(case):
    cell, L, B, T = case
    return f"{cell}-L{L}-B{B}T{T}"


class Problem:
    """A tiny float64 model, a chunk and a non-zero initial state; analytic gradients and
    finite differences of the mean loss, cached per case."""

    def __init__(self, cell, num_layers, B, T, seed=0):
        self.cell, self.B, self.T = cell, B, T
        self.config = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
        params = init_params(self.config, V, np.random.default_rng(seed), dtype=np.float64)
        # PyTorch's init with H=3 draws weights in +-0.58: the nonlinearities are well
        # out of their linear regime, so the check exercises their derivatives.
        self.net = Network(self.config, V, params)
        rng = np.random.default_rng(seed + 1)
        self.inputs = rng.integers(0, V, size=(B, T))
        self.targets = rng.integers(0, V, size=(B, T))
        self.state0 = {"h": rng.uniform(-0.9, 0.9, size=(num_layers, B, H))}
        if cell in ref.CELL_STATE_CELLS:
            self.state0["c"] = rng.uniform(-1.5, 1.5, size=(num_layers, B, H))

        state = self.fresh_state()
        self.loss = self.net.loss_and_grad(self.inputs, self.targets, state)
        ws = self.net.workspace(T, B)
        self.analytic = {name: g.copy() for name, g in self.net.grads.items()}
        self.analytic["h0"] = ws.dh0.copy()
        if cell in ref.CELL_STATE_CELLS:
            self.analytic["c0"] = ws.dc0.copy()
        self._fd = {}

    def fresh_state(self):
        return {k: v.copy() for k, v in self.state0.items()}

    def mean_loss(self, state=None):
        state = self.fresh_state() if state is None else state
        return self.net.loss_sum(self.inputs, self.targets, state) / (self.B * self.T)

    def target_array(self, name):
        """The array that ``name`` lives in (a view into the params, or the state)."""
        if name == "h0":
            return self.state0["h"]
        if name == "c0":
            return self.state0["c"]
        return self.net.params[name]

    def finite_difference(self, name, eps=EPS):
        key = (name, eps)
        if key in self._fd:
            return self._fd[key]
        self._fd[key] = central_differences(self.target_array(name), self.mean_loss, eps)
        return self._fd[key]


_problems: dict = {}


def problem(case) -> Problem:
    if case not in _problems:
        _problems[case] = Problem(*case)
    return _problems[case]


def grad_names(cell, num_layers):
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
    names = list(param_shapes(config, V)) + ["h0"]
    if cell in ref.CELL_STATE_CELLS:
        names.append("c0")
    return names


PARAMS = [pytest.param(case, name, id=f"{case_id(case)}-{name}")
          for case in CASES for name in grad_names(case[0], case[1])]


@pytest.mark.parametrize("case,name", PARAMS)
def test_gradient_matches_finite_differences(case, name):
    pb = problem(case)
    fd = pb.finite_difference(name)
    an = pb.analytic[name]
    assert an.shape == fd.shape
    assert np.all(np.isfinite(an))
    err = rel_error(fd, an)
    assert err < REL_TOL, (
        f"{name}: relative error {err:.3e} (||fd||={np.linalg.norm(fd):.3e}, "
        f"||analytic||={np.linalg.norm(an):.3e}, max|diff|={np.max(np.abs(fd - an)):.3e})")


@pytest.mark.parametrize("case", CASES[:4], ids=[case_id(c) for c in CASES[:4]])
def test_finite_difference_evaluations_leave_model_untouched(case):
    """The loss evaluations restore every perturbed entry and do not touch state0: the
    loss at the unperturbed point is still the one loss_and_grad reported."""
    pb = problem(case)
    for name in grad_names(case[0], case[1]):
        pb.finite_difference(name)
    np.testing.assert_allclose(pb.mean_loss(), pb.loss, rtol=1e-14)


def test_eps_is_in_the_sweet_spot():
    """eps = 1e-6 and its neighbour 1e-5 both pass with margin on the tensors with the
    smallest gradients: the check is not sitting on a rounding-error cliff (which starts
    around eps = 1e-7 here) nor in the truncation-error regime."""
    pb = problem(("lstm", 2, 2, 3))
    for name in ("rnn.weight_hh_l0", "rnn.weight_ih_l0", "rnn.bias_ih_l1", "h0", "c0"):
        errs = {eps: rel_error(pb.finite_difference(name, eps), pb.analytic[name])
                for eps in (1e-5, EPS)}
        assert max(errs.values()) < REL_TOL / 4, (name, errs)


def test_gradcheck_has_power():
    """A gradient that is wrong by 0.1% in one tensor fails the bound by a wide margin."""
    pb = problem(("rnn", 1, 2, 3))
    fd = pb.finite_difference("decoder.bias")
    assert rel_error(fd, pb.analytic["decoder.bias"]) < REL_TOL
    assert rel_error(fd, pb.analytic["decoder.bias"] * 1.001) > 100 * REL_TOL


@pytest.mark.parametrize("cell", ref.CELLS)
def test_reference_matches_finite_differences(cell):
    """The NumPy reference itself, checked the same way (on its own loss), so that
    test_kernels compares against something known to be right."""
    L, B, T = 2, 2, 3
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L)
    params = {n: np.array(v) for n, v in
              init_params(config, V, np.random.default_rng(9), dtype=np.float64).items()}
    rng = np.random.default_rng(10)
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    h0 = rng.uniform(-0.9, 0.9, size=(L, B, H))
    c0 = rng.uniform(-1.5, 1.5, size=(L, B, H)) if cell in ref.CELL_STATE_CELLS else None
    loss, grads, dh0, dc0, _, _ = ref.reference_loss_and_grads(cell, params, inputs, targets,
                                                                h0, c0)
    N = B * T
    np.testing.assert_allclose(
        ref.reference_loss_sum(cell, params, inputs, targets, h0, c0) / N, loss, rtol=1e-14)

    def mean_loss():
        return ref.reference_loss_sum(cell, params, inputs, targets, h0, c0) / N

    tensors = dict(params, h0=h0)
    analytic = dict(grads, h0=dh0)
    if c0 is not None:
        tensors["c0"] = c0
        analytic["c0"] = dc0
    for name, arr in tensors.items():
        err = rel_error(central_differences(arr, mean_loss), analytic[name])
        assert err < REL_TOL, f"reference {name}: relative error {err:.3e}"
