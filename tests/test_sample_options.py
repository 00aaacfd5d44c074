"""`charlstm sample` options: --top-p (nucleus sampling, in the kernel, against a NumPy
reference), --num-samples and --stop (through the real CLI), and their invalid values."""
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from charlstm.training.config import TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.kernels.sampling import _draw
from charlstm.model.parameters import init_params
from charlstm.model.sample import STREAM_CHUNK, Sampler, stop_at
from conftest import make_text, run_cli

CHARS = "abcdefghij\n"
H = 12
TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4", "--quiet",
        # the tuner (tests/test_blas_choice.py) would add seconds to every run here
        "--blas", "openblas", "--step-weights", "stored/stored"]


# -- the kernel against the reference ------------------------------------------------------

def model(cell, num_layers, seed, scale):
    vocab = Vocab(sorted(CHARS))
    cfg = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
    params = init_params(cfg, len(vocab), np.random.default_rng(seed))
    params["decoder.weight"][...] *= scale  # spread the logits: a nucleus of a few characters
    return types.SimpleNamespace(config=cfg, params=params, vocab=vocab)


def reference_draw(logits, u, temperature, top_k, top_p):
    """Inverse CDF over the nucleus: softmax(logits / temperature), the top-k cut, then
    the fewest most likely characters whose mass reaches top_p, renormalised."""
    w = np.exp((logits - logits.max()) / temperature)
    if top_k:
        w[logits < np.sort(logits)[-top_k]] = 0.0
    if top_p < 1:
        order = np.argsort(-w, kind="stable")
        mass = np.cumsum(w[order]) / w.sum()
        n_keep = int(np.argmax(mass >= top_p)) + 1
        assert abs(mass[n_keep - 1] - top_p) > 1e-4 and (
            n_keep == 1 or abs(mass[n_keep - 2] - top_p) > 1e-4), "top_p on a nucleus boundary"
        w[order[n_keep:]] = 0.0
    cdf = np.cumsum(w) / w.sum()
    assert np.min(np.abs(cdf - u)) > 1e-4, "u on a CDF boundary"
    return int(np.searchsorted(cdf, u, side="right")), int(np.count_nonzero(w))


def reference_run(cell, m, prime, uniforms, temperature, top_k, top_p):
    p = {n: np.array(v, np.float64) for n, v in m.params.items()}
    L = m.config.num_layers
    h = np.zeros((L, 1, H))
    c = np.zeros((L, 1, H)) if cell == "lstm" else None
    ids = [m.vocab.index[ch] for ch in prime]
    for i in ids[:-1]:
        _, _, h, c = ref.reference_forward(cell, p, np.array([[i]]), h, c)
    x, out, nucleus_sizes = ids[-1], [], []
    for u in uniforms:
        _, logits, h, c = ref.reference_forward(cell, p, np.array([[x]]), h, c)
        x, size = reference_draw(logits[0, 0], u, temperature, top_k, top_p)
        out.append(m.vocab.chars[x])
        nucleus_sizes.append(size)
    return "".join(out), nucleus_sizes


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.85), (0.8, 0, 0.5), (1.3, 4, 0.7)])
def test_top_p_matches_the_reference(cell, temperature, top_k, top_p):
    m = model(cell, 2, seed=11, scale=3.0)
    sampler = Sampler(m)
    sampler.prime("abc\nde", np.random.default_rng(0))
    n = 2 * STREAM_CHUNK + 5  # several kernel calls
    got = "".join(sampler.stream(n, temperature, top_k, np.random.default_rng(9), top_p=top_p))
    uniforms = np.random.default_rng(9).random(n)
    want, sizes = reference_run(cell, m, "abc\nde", uniforms, temperature, top_k, top_p)
    assert got == want
    # The cut mattered: the nucleus was smaller than the candidates for some draws.
    assert min(sizes) < (top_k or len(CHARS))


def test_top_p_one_is_no_top_p():
    m = model("lstm", 2, seed=4, scale=3.0)
    texts = []
    for kwargs in ({}, {"top_p": 1.0}):
        sampler = Sampler(m)
        sampler.prime("ab", np.random.default_rng(0))
        texts.append("".join(sampler.stream(80, 0.9, 0, np.random.default_rng(3), **kwargs)))
    assert texts[0] == texts[1]


def probs_logits(probs):
    return np.log(np.array(probs, np.float64)).astype(np.float32)


def draws(logits, temperature, top_k, top_p, grid=200):
    scratch = np.empty(len(logits))
    return [_draw(logits, temperature, top_k, top_p, u, scratch) for u in (np.arange(grid) + 0.5) / grid]


def test_draw_keeps_the_smallest_nucleus_and_renormalises():
    logits = probs_logits([0.15, 0.5, 0.05, 0.3])
    # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is {1, 3}, drawn as 0.5 : 0.3.
    got = draws(logits, 1.0, 0, 0.7)
    assert set(got) == {1, 3}
    assert got.count(1) == pytest.approx(200 * 0.5 / 0.8, abs=1)
    # A small p keeps only the most likely character; p = 1 keeps all of them.
    assert set(draws(logits, 1.0, 0, 0.2)) == {1}
    assert set(draws(logits, 1.0, 0, 1.0)) == {0, 1, 2, 3}


def test_draw_applies_top_p_after_top_k_and_temperature():
    logits = probs_logits([0.4, 0.3, 0.2, 0.1])
    # On the full distribution p = 0.75 keeps 3; after top-k 3 the mass is renormalised
    # (0.44, 0.33, 0.22) and two reach 0.75.
    assert set(draws(logits, 1.0, 0, 0.75)) == {0, 1, 2}
    assert set(draws(logits, 1.0, 3, 0.75)) == {0, 1}
    # A high temperature flattens the distribution, so the same p needs more characters.
    assert set(draws(logits, 1.0, 0, 0.8)) == {0, 1, 2}
    assert set(draws(logits, 5.0, 0, 0.8)) == {0, 1, 2, 3}
    # Temperature 0 stays the argmax.
    assert set(draws(logits, 0.0, 0, 0.3)) == {0}


# -- stop_at, the streaming cut ---------------------------------------------------------------

def test_stop_string_across_pieces():
    assert list(stop_at(["ab", "cd", "ef"], "cd")) == ["ab", "cd"]
    assert list(stop_at(["abc", "def", "ghi"], "cd")) == ["abc", "d"]  # straddles
    assert list(stop_at(["ab", "c", "de", "f"], "bcde")) == ["ab", "c", "de"]  # over three pieces
    assert list(stop_at(["xx", "xx"], "q")) == ["xx", "xx"]  # never found
    assert list(stop_at(["ab"], None)) == ["ab"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("ab", max_size=6), max_size=8), st.text("ab", min_size=1, max_size=4))
def test_stop_at_prints_exactly_up_to_the_first_match_and_streams(pieces, stop):
    text = "".join(pieces)
    taken = []

    def source():
        for piece in pieces:
            taken.append(piece)
            yield piece

    out = []
    for piece in stop_at(source(), stop):
        assert len(taken) == len(out) + 1  # each piece is passed on before the next is read
        out.append(piece)
    i = text.find(stop)
    assert "".join(out) == (text[:i + len(stop)] if i >= 0 else text)


# -- through the real CLI ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample_options")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(6000), encoding="utf-8")
    out = tmp / "run"
    run_cli("train", corpus, *TINY, "--steps", "30", "--out", out)
    return out


def sample(run, *args):
    return run_cli("sample", run, *args).stdout


def samples(stdout):
    """The samples of a --num-samples output: each ends with a newline; a line '---'
    separates them."""
    assert stdout.endswith("\n")
    return stdout[:-1].split("\n---\n")


def test_top_p_through_the_cli(run):
    base = ["--length", "80", "--seed", "3", "--prime", "the "]
    assert sample(run, *base, "--top-p", "1") == sample(run, *base)
    narrow = sample(run, *base, "--top-p", "0.3", "--temperature", "1")
    assert narrow == sample(run, *base, "--top-p", "0.3", "--temperature", "1")
    assert narrow.startswith("the ") and len(narrow) == len("the ") + 80 + 1


def test_num_samples_structure_and_determinism(run):
    args = ["--length", "40", "--seed", "5", "--prime", "the ", "--num-samples", "3"]
    out = sample(run, *args)
    assert out == sample(run, *args)  # the same seed, the same samples
    parts = samples(out)
    assert len(parts) == 3
    for part in parts:
        assert part.startswith("the ") and len(part) == len("the ") + 40
    # The draws continue from one sample to the next ...
    assert len(set(parts)) == 3
    # ... and the first sample is the one a single sample gives.
    assert parts[0] + "\n" == sample(run, "--length", "40", "--seed", "5", "--prime", "the ")
    assert out != sample(run, *args[:2], "--seed", "6", *args[4:])


def test_num_samples_restart_from_the_prime(run):
    """Greedy samples are all the same only if each starts from the primed state."""
    parts = samples(sample(run, "--length", "25", "--temperature", "0", "--prime", "a cat",
                           "--num-samples", "3"))
    assert len(parts) == 3 and parts[0] == parts[1] == parts[2]
    no_prime = samples(sample(run, "--length", "10", "--temperature", "0", "--num-samples", "2"))
    assert len(no_prime) == 2 and no_prime[0] == no_prime[1] and len(no_prime[0]) == 10


def check_stopped(part, prime, stop, length):
    assert part.startswith(prime)
    generated = part[len(prime):]
    assert 1 <= len(generated) <= length
    i = generated.find(stop)
    if i >= 0:  # stopped at the first occurrence, which is printed, and nothing after it
        assert i + len(stop) == len(generated)
    else:
        assert len(generated) == length
    return i >= 0


def test_stop_ends_the_sample_at_the_stop_string(run):
    prime, length = "the ", 300
    full = samples(sample(run, "--length", str(length), "--seed", "8", "--prime", prime))[0]
    generated = full[len(prime):]
    # Stop strings taken from the unstopped text, straddling the first chunk boundary and
    # starting inside the first chunk: with the same seed the draws are the same, so the
    # stopped sample is the full one cut after the first occurrence.
    straddling = generated[STREAM_CHUNK - 4:STREAM_CHUNK + 5]
    assert generated.find(straddling) == STREAM_CHUNK - 4, "pick another seed: it occurs earlier"
    for start, size in [(STREAM_CHUNK - 4, 9), (STREAM_CHUNK - 2, 5), (STREAM_CHUNK - 1, 2), (3, 1), (40, 3)]:
        stop = generated[start:start + size]
        out = sample(run, "--length", str(length), "--seed", "8", "--prime", prime, "--stop", stop)
        i = generated.find(stop)
        assert out == prime + generated[:i + len(stop)] + "\n", stop
        assert out[:-1].endswith(stop)


def test_stop_with_num_samples_and_the_length_bound(run):
    out = sample(run, "--length", "60", "--seed", "2", "--prime", "the ", "--stop", " ",
                 "--num-samples", "4")
    parts = samples(out)
    assert len(parts) == 4
    stopped = [check_stopped(p, "the ", " ", 60) for p in parts]
    assert any(stopped)
    # A stop string that does not come up: --length still bounds the sample.
    never = "." * 30
    out = sample(run, "--length", "50", "--seed", "2", "--prime", "the ", "--stop", never)
    assert not check_stopped(samples(out)[0], "the ", never, 50)
    # The prime does not count: a stop string inside it does not end the sample at once.
    out = sample(run, "--length", "50", "--seed", "2", "--prime", "the cat ", "--stop", "cat")
    check_stopped(samples(out)[0], "the cat ", "cat", 50)


# -- invalid values -----------------------------------------------------------------------------

def assert_error_line(proc, code, pattern):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert pattern in errors[0], proc.stderr
    if code == 1:
        assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args,pattern", [
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "-0.5"], "--top-p"),
    (["--top-p", "1.01"], "--top-p"),
    (["--top-p", "nan"], "--top-p"),
    (["--top-p", "lots"], "--top-p"),
    (["--temperature", "nan"], "--temperature"),
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "-2"], "--num-samples"),
    (["--stop", ""], "--stop"),
])
def test_invalid_values_are_usage_errors(run, args, pattern):
    assert_error_line(run_cli("sample", run, *args, check=False), 2, pattern)


def test_stop_string_outside_the_vocabulary(run):
    proc = run_cli("sample", run, "--stop", "Zebra", check=False)
    assert_error_line(proc, 1, "'Z'")
    assert "stop string" in proc.stderr
