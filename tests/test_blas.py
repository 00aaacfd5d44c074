"""The matrix products every kernel uses, on both backends."""
import json
import subprocess
import sys

import numpy as np
import pytest

from charlstm.kernels.blas import BACKEND, matmul_nn, matmul_nt, matmul_tn
from conftest import ROOT


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_products_match_numpy(dtype, rtol):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype)
    bt = np.ascontiguousarray(b.T)
    at = np.ascontiguousarray(a.T)
    out = np.empty((7, 3), dtype)
    matmul_nn(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=rtol)
    matmul_nt(a, bt, out)
    np.testing.assert_allclose(out, a @ b, rtol=rtol)
    c = rng.standard_normal((7, 3)).astype(dtype)
    out[...] = c
    matmul_tn(at, b, out, 1.0)
    np.testing.assert_allclose(out, c + a @ b, rtol=rtol, atol=rtol)
    # views that are C-contiguous slices work in place
    big = np.zeros((2, 7, 3), dtype)
    matmul_nn(a, b, big[1])
    np.testing.assert_allclose(big[1], a @ b, rtol=rtol)
    assert not big[0].any()


def test_backend_is_numpys_openblas_on_wheels():
    # PyPI's NumPy wheels ship OpenBLAS; the fallback exists for other builds.
    assert BACKEND in ("openblas", "numpy")


def test_fallback_backend_gives_the_same_training_step():
    script = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from charlstm.kernels.blas import BACKEND
from charlstm.training.config import TrainConfig
from charlstm.model.parameters import init_params
from charlstm.model.network import Network
out = {{"backend": BACKEND}}
for cell in ("lstm", "rnn", "gru"):
    config = TrainConfig(cell=cell, hidden_size=6, num_layers=2)
    params = init_params(config, 9, np.random.default_rng(1), dtype=np.float64)
    net = Network(config, 9, params)
    rng = np.random.default_rng(2)
    x, y = rng.integers(9, size=(3, 5)), rng.integers(9, size=(3, 5))
    loss = net.loss_and_grad(x, y, net.zero_state(3))
    stream = net.loss_sum(x[:1], y[:1], net.zero_state(1))  # batch 1 takes the gemv path
    out[cell] = [loss, stream] + net.grads.flat.tolist()
print(json.dumps(out))
""".format(root=str(ROOT))
    results = []
    for env in ({}, {"CHARLSTM_BLAS": "numpy"}):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**__import__("os").environ, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert results[1]["backend"] == "numpy"
    for cell in ("lstm", "rnn", "gru"):
        np.testing.assert_allclose(results[0][cell], results[1][cell], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_one_row_products_take_the_gemv_path(dtype, rtol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6)).astype(dtype)
    w = rng.standard_normal((9, 6)).astype(dtype)
    out = np.empty((1, 9), dtype)
    matmul_nt(x, w, out)
    np.testing.assert_allclose(out, x @ w.T, rtol=rtol)
    wt = np.ascontiguousarray(w.T)
    matmul_nn(x, wt, out)
    np.testing.assert_allclose(out, x @ wt, rtol=rtol)
    prev = out.copy()
    matmul_nn(x, wt, out, 1.0)
    np.testing.assert_allclose(out, prev + x @ wt, rtol=rtol)
