"""What each recurrent cell is, in one table.

A cell's kernels live in kernels/<name>.py (a forward beside its backward), with the
cell's Python side beside them: the workspace buffers its kernels use and the calls
that run one layer forward and backward (``Cell.kernels()``). Its NumPy twin is in
tests/reference.py. Everything else that differs between cells reads this table:
the gate count G of PyTorch's [G*H, in] weight layout, the state a layer carries, the
sampling kernel's code, where bias_hh's rows go, the per-layer peephole weights, which
gate block ``--forget-bias`` sets, and PyTorch's module of the same name, if it has one.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from charlstm.kernels.codes import CELL_CIFG, CELL_GRU, CELL_LSTM, CELL_PEEPHOLE, CELL_RNN


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int  # G: weight_ih and weight_hh are [G*H, in] and [G*H, H], PyTorch's layout
    state: tuple  # what a layer carries between chunks: "h", and "c" for the LSTM family
    sampling_code: int  # the cell's code in kernels/sampling.py's generate
    # The GRU's bias_hh candidate (n) rows sit inside r * (h W_hn^T + b_hn), so they
    # cannot be folded into the input projection with the other biases.
    bias_hh_rows_inside: bool
    torch_module: str | None  # the torch.nn module with the same parameters and math
    # Per-layer diagonal weights [H] beyond PyTorch's four tensors, in state_dict order:
    # parameter rnn.<name>_l{k} for each name.
    peepholes: tuple = ()
    # (gate block, sign) whose bias rows `--forget-bias B` starts at sign * B, so that
    # the forget gate starts near sigmoid(B); None for a cell without a forget gate.
    forget_gate: tuple | None = None

    @property
    def has_cell_state(self) -> bool:
        return "c" in self.state

    def kernels(self):
        """The module kernels/<name>.py: its layer_forward and layer_backward, and the
        LAYER_BUFFERS and SHARED_BUFFERS they use. Imported on demand, so reading the
        table (checking a configuration) loads no kernel."""
        return importlib.import_module(f"charlstm.kernels.{self.name}")


CELL_TABLE = {
    "lstm": Cell("lstm", 4, ("h", "c"), CELL_LSTM, False, "LSTM", forget_gate=(1, 1.0)),
    "rnn": Cell("rnn", 1, ("h",), CELL_RNN, False, "RNN"),
    "gru": Cell("gru", 3, ("h",), CELL_GRU, True, "GRU"),
    # The LSTM (gate order i, f, g, o) whose gates also see the cell state (Gers,
    # Schraudolph & Schmidhuber 2002); PyTorch has no such module.
    "peephole": Cell("peephole", 4, ("h", "c"), CELL_PEEPHOLE, False, None,
                     peepholes=("weight_ci", "weight_cf", "weight_co"), forget_gate=(1, 1.0)),
    # Coupled input and forget gates, f = 1 - i (Greff et al. 2017): gate order i, g, o.
    # f = 1 - sigmoid(a_i) = sigmoid(-a_i), so the input gate's rows start at -B.
    "cifg": Cell("cifg", 3, ("h", "c"), CELL_CIFG, False, None, forget_gate=(0, -1.0)),
}

# The cells with a forget gate (or, for cifg, the input gate that stands in for it).
FORGET_GATE_CELLS = tuple(name for name, cell in CELL_TABLE.items() if cell.forget_gate)
