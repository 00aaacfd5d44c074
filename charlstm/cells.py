"""What each recurrent cell is, in one table.

A cell's kernels live in kernels/<name>.py (a forward beside its backward) and its NumPy
twin in tests/reference.py; everything else that differs between cells reads this table:
the gate count G of PyTorch's [G*H, in] weight layout, the state a layer carries, the
sampling kernel's code, where bias_hh's rows go, and PyTorch's module of the same name.
"""
from __future__ import annotations

from dataclasses import dataclass

from .kernels.codes import CELL_GRU, CELL_LSTM, CELL_RNN


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int  # G: weight_ih and weight_hh are [G*H, in] and [G*H, H], PyTorch's layout
    state: tuple  # what a layer carries between chunks: "h", and "c" for the LSTM
    sampling_code: int  # the cell's code in kernels/sampling.py's generate
    # The GRU's bias_hh candidate (n) rows sit inside r * (h W_hn^T + b_hn), so they
    # cannot be folded into the input projection with the other biases.
    bias_hh_rows_inside: bool
    torch_module: str  # the torch.nn module with the same parameters and math

    @property
    def has_cell_state(self) -> bool:
        return "c" in self.state


CELL_TABLE = {
    "lstm": Cell("lstm", 4, ("h", "c"), CELL_LSTM, False, "LSTM"),
    "rnn": Cell("rnn", 1, ("h",), CELL_RNN, False, "RNN"),
    "gru": Cell("gru", 3, ("h",), CELL_GRU, True, "GRU"),
}
