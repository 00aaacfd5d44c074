"""The cell table (charlstm/cells.py) agrees with what the code built from it does."""
import numpy as np
import pytest

from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import CELLS, TrainConfig
from charlstm.model.parameters import init_params, param_shapes
from charlstm.model.network import Network


@pytest.mark.parametrize("name", CELLS)
def test_each_cell_matches_its_table_row(name):
    cell = CELL_TABLE[name]
    assert cell.name == name and CELLS == tuple(CELL_TABLE)
    H, V, L = 5, 7, 2
    config = TrainConfig(cell=name, hidden_size=H, num_layers=L)
    shapes = param_shapes(config, V)
    assert shapes["rnn.weight_hh_l0"] == (cell.gates * H, H)
    assert shapes["rnn.weight_ih_l1"] == (cell.gates * H, H)
    net = Network(config, V, init_params(config, V, np.random.default_rng(0)))
    assert tuple(net.zero_state(3)) == cell.state
    assert cell.has_cell_state == (name in ("lstm", "peephole", "cifg"))
    extra = [n for n in shapes if not n.startswith(("rnn.weight_ih", "rnn.weight_hh",
                                                    "rnn.bias", "decoder."))]
    assert extra == [f"rnn.{p}_l{k}" for k in range(L) for p in cell.peepholes]
    assert all(shapes[n] == (H,) for n in extra)
    if cell.forget_gate is not None:
        block, sign = cell.forget_gate
        assert 0 <= block < cell.gates and sign in (1.0, -1.0)


def test_sampling_codes_are_distinct():
    codes = [cell.sampling_code for cell in CELL_TABLE.values()]
    assert len(set(codes)) == len(codes)


def test_only_the_cells_with_a_forget_gate_take_a_forget_bias():
    from charlstm.model.cells import FORGET_GATE_CELLS

    assert FORGET_GATE_CELLS == ("lstm", "peephole", "cifg")


@pytest.mark.parametrize("name", [n for n in CELLS if CELL_TABLE[n].torch_module])
def test_the_torch_module_has_the_same_parameters(name):
    torch = pytest.importorskip("torch", reason="torch is not installed (only to compare)")
    cell = CELL_TABLE[name]
    module = getattr(torch.nn, cell.torch_module)(7, 5, 2)
    config = TrainConfig(cell=name, hidden_size=5, num_layers=2)
    ours = {k[len("rnn."):]: v for k, v in param_shapes(config, 7).items() if k.startswith("rnn.")}
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == ours
