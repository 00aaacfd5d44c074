"""The sampling kernel against the NumPy reference, for every cell, and top-k."""
import subprocess
import sys
import types

import numpy as np
import pytest

import reference as ref
from charlstm.training.config import TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.model.parameters import init_params
from charlstm.model.sample import Sampler
from conftest import ROOT

CHARS = "abcdefghij\n"
H = 12


def model(cell, num_layers, seed, hidden_size=H):
    vocab = Vocab(sorted(CHARS))
    cfg = TrainConfig(cell=cell, hidden_size=hidden_size, num_layers=num_layers)
    params = init_params(cfg, len(vocab), np.random.default_rng(seed))
    params["decoder.weight"][...] *= 6.0  # decisive logits: greedy is far from ties
    return types.SimpleNamespace(config=cfg, params=params, vocab=vocab)


def reference_step(cell, p, char_id, h, c):
    _, logits, hT, cT = ref.reference_forward(cell, p, np.array([[char_id]]), h, c)
    return logits[0, 0], hT, cT


def reference_run(cell, m, prime, uniforms, temperature, top_k):
    p = {n: np.array(v, np.float64) for n, v in m.params.items()}
    L, hidden = m.config.num_layers, m.config.hidden_size
    h = np.zeros((L, 1, hidden))
    c = np.zeros((L, 1, hidden)) if cell in ref.CELL_STATE_CELLS else None
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


@pytest.mark.parametrize("cell", ref.CELLS)
def test_two_cores_sample_what_one_core_samples(cell):
    """With a hidden size that splits into two unit blocks, the sample drawn on two
    cores (each computing half the units, meeting at barriers) is the one-core sample
    to the last bit, state included, and both are the reference's."""
    m = model(cell, 2, seed=14, hidden_size=64)
    runs = {}
    for ranks in (1, 2):
        sampler = Sampler(m, ranks=ranks)
        assert sampler.blocks == 2
        rng = np.random.default_rng(5)
        sampler.prime("abc\nde", rng)
        text = "".join(sampler.stream(70, 0.9, 0, rng))  # three stream chunks
        runs[ranks] = text, sampler.h.copy(), sampler.c.copy()
    assert runs[1][0] == runs[2][0]
    np.testing.assert_array_equal(runs[1][1], runs[2][1])
    np.testing.assert_array_equal(runs[1][2], runs[2][2])
    rng = np.random.default_rng(5)  # a text prime draws nothing: the same uniforms
    want, h = reference_run(cell, m, "abc\nde", np.concatenate(
        [rng.random(32), rng.random(32), rng.random(6)]), 0.9, 0)
    assert runs[1][0] == want
    np.testing.assert_allclose(runs[1][1], h, rtol=1e-4, atol=1e-5)


def test_a_sample_that_fell_back_to_one_core_tries_two_again_and_keeps_its_text():
    """After a fall-back to one core (two slow two-core calls of three), every
    REPROBE_FIRST-th call tries two cores: back to two when the try is fast, and half
    as often after each try that is not. The text is the one-core text throughout."""
    from charlstm.model.sample import REPROBE_FIRST, REPROBE_MAX

    m = model("lstm", 2, seed=14, hidden_size=64)
    length = 32 * (REPROBE_FIRST + 5)  # stream chunks of 32: calls past the first try
    rng = np.random.default_rng(3)
    one = Sampler(m, ranks=1)
    one.prime("ab", rng)
    want = "".join(one.stream(length, 1.0, 0, rng))
    for one_core_s, ranks_after, every_after in ((1.0, 2, REPROBE_FIRST),  # any try wins
                                                 (1e-12, 1, 2 * REPROBE_FIRST)):  # none does
        sampler = Sampler(m)
        sampler.ranks, sampler._one_core_s = 1, one_core_s  # as after a fall-back
        rng = np.random.default_rng(3)
        sampler.prime("ab", rng)
        assert "".join(sampler.stream(length, 1.0, 0, rng)) == want
        assert sampler.ranks == ranks_after and sampler._probe_every == every_after
    forced = Sampler(m, ranks=1)
    forced._one_core_s = 1.0
    assert not any(forced._probe_due() for _ in range(2 * REPROBE_MAX))  # forced: never


def test_a_model_that_does_not_split_generates_on_one_core():
    m = model("lstm", 1, seed=2, hidden_size=12)  # 4 * 12 gate columns: not two panels' worth
    assert Sampler(m).blocks == 1
    with pytest.raises(ValueError, match="do not split"):
        Sampler(m, ranks=2)




_AFTER_FORK_AND_AT_EXIT = """
import atexit, os, sys
import numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_sampling import model
from charlstm.model.sample import Sampler

m = model("lstm", 2, seed=14, hidden_size=64)

def text(ranks, n):
    sampler = Sampler(m, ranks=ranks)
    rng = np.random.default_rng(5)
    sampler.prime("abc", rng)
    return sampler, rng, "".join(sampler.stream(n, 0.9, 0, rng))

want = text(1, 80)[2]
sampler, rng, first = text(2, 40)  # the two-core pool's thread now runs in this process
read, write = os.pipe()
if os.fork() == 0:  # the child inherits the pool, not its thread
    rest = "".join(sampler.stream(40, 0.9, 0, rng))
    os.write(write, (first + rest).encode())
    os._exit(0)
os.close(write)
child = os.read(read, 1000).decode()
os.wait()
print("fork", child == want)
atexit.register(lambda: print("exit", text(2, 80)[2] == want, flush=True))
"""


def test_two_core_sampling_survives_a_fork_and_interpreter_shutdown():
    """A forked child samples with the parent's two-core Sampler (whose worker thread it
    did not inherit), and a Sampler runs inside an atexit handler (when no thread can
    start): both give the one-core text instead of hanging or failing."""
    script = _AFTER_FORK_AND_AT_EXIT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["fork", "True", "exit", "True"]
