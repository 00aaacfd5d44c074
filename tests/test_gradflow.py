"""`charlstm gradflow`: per-step gradients of one prediction's loss, checked against
central finite differences of an independent NumPy forward pass."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from charlstm.model import checkpoint as ckpt_io
from charlstm.tools import gradflow as gf
from charlstm.cli import gradflow as gradflow_command
from charlstm.training.config import TrainConfig
from charlstm.errors import UserError
from charlstm.model.parameters import init_params
from charlstm.model.network import Network
from charlstm.training.loop import Trainer, prepare_data
from conftest import make_text

import reference as ref

from finite_differences import EPS, REL_TOL, rel_error

V, H = 5, 3


def step_forward(cell, params, inputs, targets, perturb=None):
    """Summed last-position loss of each chunk, one step and one layer at a time, written
    from the cell equations (tests/reference.py), from zero state. ``perturb`` =
    (name, t, b, j, delta) adds delta to unit j of chunk b of h_t (name 'h_l{k}') or c_t
    ('c_l{k}') of layer k right after it is computed, so that everything computed from
    it afterwards sees the change: the finite difference of the result is dL_T/dh_t."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    L = sum(1 for n in p if n.startswith("rnn.weight_ih_l"))
    K, S = inputs.shape
    h = np.zeros((L, K, H))
    c = np.zeros((L, K, H))

    def bump(name, t, arr):
        if perturb is not None and perturb[0] == name and perturb[1] == t:
            arr = arr.copy()
            arr[perturb[2], perturb[3]] += perturb[4]
        return arr

    for t in range(S):
        x = ref.onehot(inputs[:, t], V)
        for k in range(L):
            W_ih, W_hh = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
            b_ih, b_hh = p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]
            if cell == "lstm":
                pre = x @ W_ih.T + b_ih + h[k] @ W_hh.T + b_hh
                i, f = ref.sigmoid(pre[:, :H]), ref.sigmoid(pre[:, H:2 * H])
                g, o = np.tanh(pre[:, 2 * H:3 * H]), ref.sigmoid(pre[:, 3 * H:])
                c_new = bump(f"c_l{k}", t, f * c[k] + i * g)
                h_new = o * np.tanh(c_new)
                c[k] = c_new
            elif cell == "peephole":
                pre = x @ W_ih.T + b_ih + h[k] @ W_hh.T + b_hh
                w_ci, w_cf, w_co = (p[f"rnn.{n}_l{k}"] for n in ref.PEEPHOLES)
                i = ref.sigmoid(pre[:, :H] + w_ci * c[k])
                f = ref.sigmoid(pre[:, H:2 * H] + w_cf * c[k])
                g = np.tanh(pre[:, 2 * H:3 * H])
                c_new = bump(f"c_l{k}", t, f * c[k] + i * g)
                o = ref.sigmoid(pre[:, 3 * H:] + w_co * c_new)  # sees the bumped c_t
                h_new = o * np.tanh(c_new)
                c[k] = c_new
            elif cell == "cifg":
                pre = x @ W_ih.T + b_ih + h[k] @ W_hh.T + b_hh
                i, g = ref.sigmoid(pre[:, :H]), np.tanh(pre[:, H:2 * H])
                o = ref.sigmoid(pre[:, 2 * H:])
                c_new = bump(f"c_l{k}", t, (1 - i) * c[k] + i * g)
                h_new = o * np.tanh(c_new)
                c[k] = c_new
            elif cell == "gru":
                gi = x @ W_ih.T + b_ih
                gh = h[k] @ W_hh.T + b_hh
                r = ref.sigmoid(gi[:, :H] + gh[:, :H])
                z = ref.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                h_new = (1 - z) * n + z * h[k]
            else:
                h_new = np.tanh(x @ W_ih.T + b_ih + h[k] @ W_hh.T + b_hh)
            h_new = bump(f"h_l{k}", t, h_new)
            h[k] = h_new
            x = h_new
    logits = x @ p["decoder.weight"].T + p["decoder.bias"]
    return -ref.log_softmax(logits)[np.arange(K), targets].sum()


CASES = [("lstm", 2), ("rnn", 2), ("gru", 2), ("lstm", 1), ("gru", 3), ("peephole", 2),
         ("cifg", 2)]


@pytest.mark.parametrize("cell,num_layers", CASES, ids=[f"{c}-L{l}" for c, l in CASES])
def test_per_step_gradients_match_finite_differences(cell, num_layers):
    K, S = 2, 6
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=num_layers)
    params = init_params(config, V, np.random.default_rng(3), dtype=np.float64)
    net = Network(config, V, params)
    rng = np.random.default_rng(4)
    inputs = rng.integers(0, V, size=(K, S))
    targets = rng.integers(0, V, size=K)
    res = gf.flow_gradients(net, inputs, targets, keep_vectors=True)
    names = gf.quantity_names(cell, num_layers)
    assert list(res["vectors"]) == names == list(res["norms"])
    # The independent forward computes the same loss as the kernels.
    plain = {n: np.array(v) for n, v in params.items()}
    np.testing.assert_allclose(step_forward(cell, plain, inputs, targets), res["loss"].sum(),
                               rtol=1e-12)
    for name in names:
        analytic = res["vectors"][name]  # [S, K, H]
        fd = np.zeros_like(analytic)
        for t, b, j in np.ndindex(S, K, H):
            plus = step_forward(cell, plain, inputs, targets, (name, t, b, j, EPS))
            minus = step_forward(cell, plain, inputs, targets, (name, t, b, j, -EPS))
            fd[t, b, j] = (plus - minus) / (2 * EPS)
        err = rel_error(fd, analytic)
        assert err < REL_TOL, f"{name}: relative error {err:.3e}"
        # Per step too, down to the far end, where the gradients are smallest.
        for t in range(S):
            assert rel_error(fd[t], analytic[t]) < 1e-5, (name, t)
        np.testing.assert_allclose(res["norms"][name], np.linalg.norm(analytic, axis=2).T)
        assert np.all(res["norms"][name][:, 0] > 0)  # it reaches the chunk's first step
    top = f"h_l{num_layers - 1}"
    # At distance 0, the top layer's gradient is the decoder's: W_dec^T (softmax - onehot).
    p = np.exp(ref.log_softmax(net.forward(inputs, net.zero_state(K)).logits.reshape(S, K, V)[-1]))
    p[np.arange(K), targets] -= 1
    np.testing.assert_allclose(res["vectors"][top][-1], p @ params["decoder.weight"], rtol=1e-12)


def test_chunk_starts_are_even_and_distinct():
    assert gf.chunk_starts(100, 8, 4) == [0, 30, 60, 90]
    assert gf.chunk_starts(10, 8, 16) == [0]
    assert gf.chunk_starts(9, 8, 16) == []
    assert gf.chunk_starts(13, 8, 16) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny untrained checkpoint per cell and a text of its vocabulary."""
    root = tmp_path_factory.mktemp("gradflow")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    paths = {}
    for cell in ref.CELLS:
        config = TrainConfig(corpus=(str(corpus),), cell=cell, hidden_size=6, num_layers=2,
                             seq_len=8, batch_size=2, steps=0, seed=1)
        trainer = Trainer(config, prepare_data(config))
        paths[cell] = root / f"{cell}.npz"
        ckpt_io.save(trainer.to_checkpoint(0.0), paths[cell])
    text = root / "text.txt"
    text.write_text(make_text(400, seed=5), encoding="utf-8")
    return paths, text


@pytest.mark.parametrize("cell", ref.CELLS)
def test_json_structure(run, cell):
    paths, text = run
    result = CliRunner().invoke(gradflow_command, [str(paths[cell]), str(text), "--json",
                                              "--length", "12", "--chunks", "5"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    names = (["h_l0", "c_l0", "h_l1", "c_l1"] if cell in ref.CELL_STATE_CELLS
             else ["h_l0", "h_l1"])
    assert out["cell"] == cell and out["num_layers"] == 2 and out["hidden_size"] == 6
    assert out["length"] == 12 and out["chunks"] == 5 and len(out["targets_at"]) == 5
    assert out["distance"] == list(range(13))
    assert list(out["mean_norm"]) == names
    for values in out["mean_norm"].values():
        assert len(values) == 13 and all(np.isfinite(values)) and min(values) > 0
    # The command's numbers are the mean over the chunks of flow_gradients' norms.
    ckpt = ckpt_io.load(paths[cell])
    net = Network(ckpt.config, len(ckpt.vocab), ckpt.params.astype(np.float64))
    ids = ckpt.vocab.encode(text.read_text(encoding="utf-8"))
    starts = [t - 13 for t in out["targets_at"]]
    windows = np.stack([ids[s:s + 14].astype(np.int64) for s in starts])
    res = gf.flow_gradients(net, windows[:, :13], windows[:, 13])
    for name in names:
        np.testing.assert_allclose(out["mean_norm"][name], res["norms"][name].mean(axis=0)[::-1],
                                   rtol=1e-12)
    np.testing.assert_allclose(out["mean_loss_nats"], res["loss"].mean(), rtol=1e-12)


def test_table(run):
    paths, text = run
    result = CliRunner().invoke(gradflow_command, [str(paths["lstm"]), str(text), "--length", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("# mean over 16 chunks")
    assert lines[1].split() == ["distance", "h_l0", "c_l0", "h_l1", "c_l1"]
    assert [int(line.split()[0]) for line in lines[2:]] == [0, 1, 2, 3, 4]


def test_errors(run, tmp_path):
    paths, text = run
    bad = tmp_path / "bad.txt"
    bad.write_text("the cat sat on the mat. ZQ" * 4, encoding="utf-8")
    result = CliRunner().invoke(gradflow_command, [str(paths["rnn"]), str(bad)])
    assert isinstance(result.exception, UserError)
    assert "outside the model's vocabulary" in str(result.exception)
    assert "'Q', 'Z'" in str(result.exception)
    short = tmp_path / "short.txt"
    short.write_text("the cat", encoding="utf-8")
    result = CliRunner().invoke(gradflow_command, [str(paths["rnn"]), str(short), "--length", "6"])
    assert isinstance(result.exception, UserError) and "at least 8" in str(result.exception)
    result = CliRunner().invoke(gradflow_command, [str(paths["rnn"]), str(tmp_path / "none.txt")])
    assert isinstance(result.exception, UserError) and "no such file" in str(result.exception)


def test_plot_needs_matplotlib(run, tmp_path, monkeypatch):
    paths, text = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = CliRunner().invoke(gradflow_command, [str(paths["rnn"]), str(text), "-o",
                                              str(tmp_path / "f.png")])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == "plotting needs matplotlib: pip install 'charlstm[plot]'"
    assert not (tmp_path / "f.png").exists()


def test_plot(run, tmp_path):
    pytest.importorskip("matplotlib")
    paths, text = run
    out = tmp_path / "flow.png"
    result = CliRunner().invoke(gradflow_command, [str(paths["lstm"]), str(text), "-o", str(out),
                                              "--length", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["length"] == 20
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_text_may_name_a_built_in_corpus(tmp_path):
    """TEXT = builtin:recall:N reads the same text as a file holding recall_text(N)."""
    from charlstm.data.recall import recall_text

    config = TrainConfig(corpus=("builtin:recall:8",), hidden_size=5, num_layers=1,
                         seq_len=8, batch_size=2, steps=0)
    trainer = Trainer(config, prepare_data(config))
    ckpt = tmp_path / "recall.npz"
    ckpt_io.save(trainer.to_checkpoint(0.0), ckpt)
    text = tmp_path / "recall.txt"
    text.write_text(recall_text(8), encoding="utf-8")
    args = ["--json", "--length", "10", "--chunks", "3"]
    named = CliRunner().invoke(gradflow_command, [str(ckpt), "builtin:recall:8", *args])
    from_file = CliRunner().invoke(gradflow_command, [str(ckpt), str(text), *args])
    assert named.exit_code == 0, named.output
    assert json.loads(named.output) == json.loads(from_file.output)
    bad = CliRunner().invoke(gradflow_command, [str(ckpt), "builtin:recall:x", *args])
    assert isinstance(bad.exception, UserError) and "builtin:recall:N" in str(bad.exception)
