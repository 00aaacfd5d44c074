"""`charlstm gradcheck`, run through click's test runner on the command object (charlstm/cli.py)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charlstm.tools import gradcheck as gc
from charlstm.model.cells import CELL_TABLE
from charlstm.cli import gradcheck as gradcheck_command
from charlstm.training.config import CELLS, TrainConfig
from charlstm.model.parameters import param_shapes
from charlstm.model.network import Network


def expected_names(cell):
    cfg = TrainConfig(cell=cell, hidden_size=gc.HIDDEN, num_layers=gc.LAYERS)
    names = list(param_shapes(cfg, gc.VOCAB)) + ["h0"]
    return names + (["c0"] if CELL_TABLE[cell].has_cell_state else [])


@pytest.mark.parametrize("cell", CELLS)
def test_every_tensor_passes(cell):
    result = CliRunner().invoke(gradcheck_command, ["--cell", cell])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:-1]]
    assert [r[1] for r in rows] == expected_names(cell)
    assert all(r[0] == cell and r[-1] == "ok" for r in rows)
    assert result.output.splitlines()[-1].startswith(f"all {len(rows)} tensors ok")


def test_json_structure_and_all_cells():
    result = CliRunner().invoke(gradcheck_command, ["--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["ok"] is True and out["eps"] == 1e-6 and out["tolerance"] == 1e-6
    assert out["model"] == {"vocab_size": 5, "hidden_size": 3, "num_layers": 2,
                            "batch_size": 2, "seq_len": 3}
    checks = out["checks"]
    for cell in CELLS:
        mine = [c for c in checks if c["cell"] == cell]
        assert [c["parameter"] for c in mine] == expected_names(cell)
    shapes = dict(param_shapes(TrainConfig(cell="lstm", hidden_size=3, num_layers=2), 5),
                  h0=(2, 2, 3), c0=(2, 2, 3))
    for c in checks:
        assert set(c) == {"cell", "parameter", "shape", "rel_error", "ok"}
        assert c["ok"] is True and 0 <= c["rel_error"] < 1e-6
        if c["cell"] == "lstm":
            assert tuple(c["shape"]) == shapes[c["parameter"]]


def test_seed_gives_another_model():
    a = gc.check_gradients("rnn", seed=0)
    b = gc.check_gradients("rnn", seed=5)
    assert all(r.ok for r in a + b)
    assert [r.rel_error for r in a] != [r.rel_error for r in b]


def _corrupt(monkeypatch, scale_param=None, scale_dh0=None):
    """Make Network.loss_and_grad report a slightly wrong gradient."""
    original = Network.loss_and_grad

    def wrong(self, inputs, targets, state, masks=None):
        loss = original(self, inputs, targets, state, masks)
        if scale_param:
            self.grads[scale_param][...] *= 1.001
        if scale_dh0:
            self.workspace(*inputs.shape[::-1]).dh0[...] *= 1.001
        return loss

    monkeypatch.setattr(Network, "loss_and_grad", wrong)


@pytest.mark.parametrize("which", ["decoder.bias", "rnn.weight_hh_l0", "h0"])
def test_a_corrupted_gradient_fails(monkeypatch, which):
    if which == "h0":
        _corrupt(monkeypatch, scale_dh0=True)
    else:
        _corrupt(monkeypatch, scale_param=which)
    result = CliRunner().invoke(gradcheck_command, ["--cell", "gru"])
    assert result.exit_code == 1
    rows = {line.split()[1]: line.split()[-1] for line in result.output.splitlines()[1:-1]}
    assert rows.pop(which) == "FAIL"
    assert set(rows.values()) == {"ok"}
    assert "1 of" in result.output.splitlines()[-1] and "FAIL" in result.output.splitlines()[-1]

    result = CliRunner().invoke(gradcheck_command, ["--cell", "gru", "--json"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["ok"] is False
    failed = [c for c in out["checks"] if not c["ok"]]
    assert [c["parameter"] for c in failed] == [which] and failed[0]["rel_error"] > 1e-4


def test_a_non_finite_gradient_fails(monkeypatch):
    original = Network.loss_and_grad

    def nan(self, inputs, targets, state, masks=None):
        loss = original(self, inputs, targets, state, masks)
        self.grads["decoder.weight"][0, 0] = np.nan
        return loss

    monkeypatch.setattr(Network, "loss_and_grad", nan)
    result = CliRunner().invoke(gradcheck_command, ["--cell", "rnn", "--json"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    bad = [c for c in out["checks"] if not c["ok"]]
    assert [c["parameter"] for c in bad] == ["decoder.weight"] and bad[0]["rel_error"] is None


def test_dropout_checks_the_masked_gradient(monkeypatch):
    """With --dropout the check passes for every cell, and a gradient computed without the
    mask (what a backward that forgot dropout would report) fails it."""
    result = CliRunner().invoke(gradcheck_command, ["--dropout", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["ok"] and out["dropout"] == 0.5
    assert {c["cell"] for c in out["checks"]} == set(CELLS)

    original = Network.loss_and_grad
    monkeypatch.setattr(Network, "loss_and_grad",
                        lambda self, inputs, targets, state, masks=None:
                        original(self, inputs, targets, state))
    result = CliRunner().invoke(gradcheck_command, ["--cell", "lstm", "--dropout", "0.5", "--json"])
    assert result.exit_code == 1
    assert not json.loads(result.output)["ok"]


def test_help_is_the_docstring():
    result = CliRunner().invoke(gradcheck_command, ["--help"])
    assert result.exit_code == 0
    assert "central finite differences" in result.output and "--cell" in result.output
