"""The sampling kernel against the NumPy reference, for every cell, and top-k."""
import types

import numpy as np
import pytest

import reference as ref
from charlstm.config import TrainConfig
from charlstm.corpus import Vocab
from charlstm.kernels.sampling import vecmat
from charlstm.parameters import init_params
from charlstm.sample import Sampler

CHARS = "abcdefghij\n"
H = 12


def model(cell, num_layers, seed):
    vocab = Vocab(sorted(CHARS))
    cfg = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
    params = init_params(cfg, len(vocab), np.random.default_rng(seed))
    params["decoder.weight"][...] *= 6.0  # decisive logits: greedy is far from ties
    return types.SimpleNamespace(config=cfg, params=params, vocab=vocab)


def reference_step(cell, p, char_id, h, c):
    _, logits, hT, cT = ref.reference_forward(cell, p, np.array([[char_id]]), h, c)
    return logits[0, 0], hT, cT


def reference_run(cell, m, prime, uniforms, temperature, top_k):
    p = {n: np.array(v, np.float64) for n, v in m.params.items()}
    L = m.config.num_layers
    h = np.zeros((L, 1, H))
    c = np.zeros((L, 1, H)) if cell in ref.CELL_STATE_CELLS else None
    ids = [m.vocab.index[ch] for ch in prime]
    for i in ids[:-1]:
        _, h, c = reference_step(cell, p, i, h, c)
    x, out = ids[-1], []
    for u in uniforms:
        logits, h, c = reference_step(cell, p, x, h, c)
        if temperature == 0:
            top2 = np.sort(logits)[-2:]
            assert top2[1] - top2[0] > 1e-3, "near tie"
            x = int(np.argmax(logits))
        else:
            z = (logits - logits.max()) / temperature
            w = np.exp(z)
            if top_k:
                w[logits < np.sort(logits)[-top_k]] = 0.0
            cdf = np.cumsum(w) / w.sum()
            assert np.min(np.abs(cdf - u)) > 1e-4, "u on a CDF boundary"
            x = int(np.searchsorted(cdf, u, side="right"))
        out.append(m.vocab.chars[x])
    return "".join(out), h


@pytest.mark.parametrize("cell", ref.CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (0.8, 0), (1.0, 3)])
def test_sampling_matches_the_reference(cell, num_layers, temperature, top_k):
    m = model(cell, num_layers, seed=3 + num_layers)
    sampler = Sampler(m)
    sampler.prime("abc\nde", np.random.default_rng(0))
    n = 25
    got = "".join(sampler.stream(n, temperature, top_k, np.random.default_rng(7)))
    uniforms = np.random.default_rng(7).random(n)
    want, h = reference_run(cell, m, "abc\nde", uniforms, temperature, top_k)
    assert got == want
    np.testing.assert_allclose(sampler.h, h, rtol=1e-4, atol=1e-5)


def test_vecmat_matches_numpy():
    rng = np.random.default_rng(0)
    for K, N in [(1, 5), (7, 3), (64, 256), (13, 1)]:
        x = rng.standard_normal(K).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32)
        out = np.full(N, np.nan, np.float32)
        vecmat(x, w, out)
        np.testing.assert_allclose(out, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
