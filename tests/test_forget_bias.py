"""``--forget-bias B``: the forget gate's bias starts at B (lstm, peephole), and the cifg's
input gate's at -B so that its forget gate 1 - i starts at sigmoid(B); refused for the
cells without a forget gate; saved with the run. Without it, every bias keeps PyTorch's
initialisation."""
import json
import math
import re

import numpy as np
import pytest

from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import CELLS, InvalidSetting, TrainConfig, validate
from charlstm.model.network import Network
from charlstm.model.parameters import init_params

from conftest import make_text, run_cli

V, H, L = 6, 4, 2
TINY = ["--hidden-size", "4", "--num-layers", "2", "--seq-len", "8", "--batch-size", "2",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]
FORGET_ROWS = {"lstm": slice(H, 2 * H), "peephole": slice(H, 2 * H), "cifg": slice(0, H)}


def assert_user_error(proc, code, pattern):
    """Exit status ``code``, no traceback, and an "Error: ..." last line matching
    ``pattern``; for status 1 that line is all of stderr (as tests/test_errors.py asks)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and lines[-1].startswith("Error: "), proc.stderr
    assert code != 1 or len(lines) == 1, proc.stderr
    assert re.search(pattern, proc.stderr.strip()), (pattern, proc.stderr)


@pytest.mark.parametrize("cell", CELLS)
def test_without_it_every_tensor_is_pytorchs_uniform_draw(cell):
    """The default is unchanged: each tensor uniform in +-1/sqrt(H), drawn in state_dict
    order from the seed's generator."""
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L)
    assert config.forget_bias is None
    params = init_params(config, V, np.random.default_rng(3), dtype=np.float64)
    rng, bound = np.random.default_rng(3), 1 / math.sqrt(H)
    for name, view in params.items():
        np.testing.assert_array_equal(view, rng.uniform(-bound, bound, size=view.shape), name)


@pytest.mark.parametrize("B", [1.0, -0.5])
@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg"])
def test_it_sets_the_forget_rows_and_nothing_else(cell, B):
    plain = init_params(TrainConfig(cell=cell, hidden_size=H, num_layers=L), V,
                        np.random.default_rng(4), dtype=np.float64)
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L, forget_bias=B)
    biased = init_params(config, V, np.random.default_rng(4), dtype=np.float64)
    rows = FORGET_ROWS[cell]
    sign = -1.0 if cell == "cifg" else 1.0
    for name, view in biased.items():
        want = plain[name].copy()
        if name.startswith("rnn.bias_ih"):
            want[rows] = sign * B
        elif name.startswith("rnn.bias_hh"):
            want[rows] = 0.0
        np.testing.assert_array_equal(view, want, name)


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg"])
def test_the_forget_gate_starts_at_sigmoid_of_B(cell):
    """With every weight at zero the gates see their biases only: the forget gate (for
    cifg, 1 - its input gate) is sigmoid(B) in every unit of every layer."""
    B = 1.0
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L, forget_bias=B)
    params = init_params(config, V, np.random.default_rng(5), dtype=np.float64)
    for name, view in params.items():
        if "weight" in name and not name.startswith("decoder"):
            view[...] = 0.0
    net = Network(config, V, params)
    state = net.zero_state(2)
    state["c"][...] = 0.7  # the peepholes are zero: the state must not matter either
    ws = net.forward(np.array([[1, 2, 3], [4, 5, 0]]), state)
    for k in range(L):
        gates = ws.gates[k][..., FORGET_ROWS[cell]]
        forget = 1.0 - gates if cell == "cifg" else gates
        np.testing.assert_allclose(forget, 1 / (1 + math.exp(-B)), rtol=1e-15)


@pytest.mark.parametrize("cell", [c for c in CELLS if CELL_TABLE[c].forget_gate is None])
def test_cells_without_a_forget_gate_refuse_it(cell, tmp_path):
    with pytest.raises(InvalidSetting, match=rf"invalid forget_bias: 1\.0 \(expected no value "
                                             rf"with cell {cell}, which has no forget gate"):
        validate(TrainConfig(cell=cell, forget_bias=1.0))
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000))
    proc = run_cli("train", corpus, *TINY, "--cell", cell, "--forget-bias", "1", "--steps", "1",
                   "--out", tmp_path / "run", check=False)
    assert_user_error(proc, 1, rf"with cell {cell}, which has no forget gate; lstm, peephole "
                               r"and cifg have one\); fix --forget-bias$")
    assert not (tmp_path / "run" / "last.npz").exists()


def test_the_option_takes_finite_numbers_only(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000))
    for value in ("nan", "inf", "one"):
        proc = run_cli("train", corpus, *TINY, "--forget-bias", value, "--steps", "1",
                       "--out", tmp_path / "run", check=False)
        assert_user_error(proc, 2, r"--forget-bias")


def test_saved_with_the_run_and_repeated_from_its_toml(tmp_path):
    """The checkpoint's configuration records B; the run's TOML file carries it, and a
    run started from that file has the same initial weights."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000))
    run, again = tmp_path / "run", tmp_path / "again"
    run_cli("train", corpus, *TINY, "--cell", "cifg", "--forget-bias", "2", "--steps", "0",
            "--out", run)
    ck = np.load(run / "last.npz", allow_pickle=False)
    assert json.loads(ck["config"].item())["hyperparameters"]["forget_bias"] == 2.0
    for k in range(2):
        np.testing.assert_array_equal(ck[f"rnn.bias_ih_l{k}"][:4], -2.0)
        np.testing.assert_array_equal(ck[f"rnn.bias_hh_l{k}"][:4], 0.0)
    toml = run_cli("info", run, "--toml").stdout
    assert "forget_bias = 2.0" in toml.splitlines()
    (tmp_path / "run.toml").write_text(toml)
    run_cli("train", "--config", tmp_path / "run.toml", "--out", again, "--quiet")
    ck2 = np.load(again / "last.npz", allow_pickle=False)
    for key in ck.files:
        if key.startswith("rnn."):
            np.testing.assert_array_equal(ck[key], ck2[key], key)

    plain = tmp_path / "plain"
    run_cli("train", corpus, *TINY, "--steps", "0", "--out", plain)
    meta = json.loads(np.load(plain / "last.npz")["config"].item())
    assert meta["hyperparameters"]["forget_bias"] is None
    assert "forget_bias" not in run_cli("info", plain, "--toml").stdout


def rewrite_config(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["config"].item())
    for key, value in changes.items():
        if value is ...:
            del meta["hyperparameters"][key]
        else:
            meta["hyperparameters"][key] = value
    arrays["config"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)
    return dst


def test_checkpoints_are_checked_by_the_same_rule(tmp_path):
    """A checkpoint that says a gru has a forget bias, or a bias that is not a number, is
    refused in one line; one from before the option (no key) has none."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000))
    run_cli("train", corpus, *TINY, "--cell", "gru", "--steps", "1", "--out", tmp_path / "gru")
    last = tmp_path / "gru" / "last.npz"
    bad = rewrite_config(last, tmp_path / "bad.npz", forget_bias=1.0)
    assert_user_error(run_cli("info", bad, check=False), 1,
                      r"invalid forget_bias: 1\.0 \(expected no value with cell gru")
    word = rewrite_config(last, tmp_path / "word.npz", forget_bias="one")
    assert_user_error(run_cli("info", word, check=False), 1, r"invalid forget_bias: 'one'")
    old = rewrite_config(last, tmp_path / "old.npz", forget_bias=...)
    info = json.loads(run_cli("info", old, "--json").stdout)
    assert info["config"]["forget_bias"] is None


def test_help_describes_it_without_a_range():
    from click.testing import CliRunner

    from charlstm.cli import main

    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--forget-bias FLOAT RANGE Start the forget gate's bias at this value" in text
    assert "None]" not in text
