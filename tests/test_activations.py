"""The float32 nonlinearities against float64 libm; float64 stays exact."""
import numpy as np

from charlstm.kernels.activations import exp_f32, sigmoid, tanh
from charlstm.kernels.jit import kernel


@kernel
def _apply(x, s, t):
    for i in range(x.size):
        s[i] = sigmoid(x[i])
        t[i] = tanh(x[i])


@kernel
def _exp(x, out):
    for i in range(x.size):
        out[i] = exp_f32(x[i])


def _inputs(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-120, 120, 200_001), rng.standard_normal(100_000) * 4,
                        [0.0, -0.0, 1e-30, -1e-30, 88.0, -87.0, 1e4, -1e4]])
    return x.astype(dtype)


def test_float32_sigmoid_and_tanh_are_within_2e_7_absolute():
    x = _inputs(np.float32)
    s, t = np.empty_like(x), np.empty_like(x)
    _apply(x, s, t)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        assert np.abs(s - 1 / (1 + np.exp(-x64))).max() < 2e-7
    assert np.abs(t - np.tanh(x64)).max() < 2e-7
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(t))
    assert s.min() >= 0 and s.max() <= 1 and np.abs(t).max() <= 1
    assert np.array_equal(np.sign(t[x != 0]), np.sign(x[x != 0]))


def test_float32_exp_relative_error():
    x = np.linspace(-80, 80, 100_001).astype(np.float32)
    out = np.empty_like(x)
    _exp(x, out)
    rel = np.abs(out / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 3e-7


def test_float64_path_is_exact():
    # libm and NumPy's own SIMD exp/tanh may differ in the last bit, no more.
    x = _inputs(np.float64)
    s, t = np.empty_like(x), np.empty_like(x)
    _apply(x, s, t)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(s, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15, atol=0)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-15, atol=0)


def test_float32_tanh_keeps_relative_accuracy_near_zero():
    x = np.concatenate([np.geomspace(1e-30, 0.5, 20_000), -np.geomspace(1e-30, 0.5, 20_000)]).astype(np.float32)
    s, t = np.empty_like(x), np.empty_like(x)
    _apply(x, s, t)
    exact = np.tanh(x.astype(np.float64))
    assert (np.abs(t - exact) / np.abs(exact)).max() < 1e-6
