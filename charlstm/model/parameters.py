"""Parameter layout: names and shapes as PyTorch's state_dict, in one flat buffer.

Parameters (and their gradients, and each optimizer statistic) live in one contiguous
buffer with a named view per tensor, so optimizers and clipping work on one array and
the hot loop allocates nothing.
"""
from __future__ import annotations

import math

import numpy as np

from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import TrainConfig


def param_shapes(config: TrainConfig, vocab_size: int) -> dict[str, tuple]:
    """Ordered names and shapes, as ``nn.LSTM``/``nn.GRU``/``nn.RNN`` named ``rnn`` plus
    ``nn.Linear`` named ``decoder`` would list them in ``state_dict()``. The peephole
    cell's diagonal weights follow each layer's biases, in the same style:
    ``rnn.weight_ci_l{k}``, ``rnn.weight_cf_l{k}``, ``rnn.weight_co_l{k}``, each [H]."""
    G, H = config.gates, config.hidden_size
    shapes = {}
    for k in range(config.num_layers):
        n_in = vocab_size if k == 0 else H
        shapes[f"rnn.weight_ih_l{k}"] = (G * H, n_in)
        shapes[f"rnn.weight_hh_l{k}"] = (G * H, H)
        shapes[f"rnn.bias_ih_l{k}"] = (G * H,)
        shapes[f"rnn.bias_hh_l{k}"] = (G * H,)
        for name in CELL_TABLE[config.cell].peepholes:
            shapes[f"rnn.{name}_l{k}"] = (H,)
    shapes["decoder.weight"] = (vocab_size, H)
    shapes["decoder.bias"] = (vocab_size,)
    return shapes


class FlatParams:
    """One contiguous buffer with a named, shaped view per tensor."""

    def __init__(self, shapes: dict[str, tuple], dtype=np.float32, flat: np.ndarray | None = None):
        self.shapes = dict(shapes)
        size = sum(math.prod(s) for s in self.shapes.values())
        if flat is None:
            flat = np.zeros(size, dtype=dtype)
        assert flat.shape == (size,) and flat.flags.c_contiguous
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.views[name] = flat[offset:offset + n].reshape(shape)
            offset += n

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __iter__(self):
        return iter(self.views)

    def items(self):
        return self.views.items()

    def zeros_like(self) -> "FlatParams":
        return FlatParams(self.shapes, flat=np.zeros_like(self.flat))

    def copy(self) -> "FlatParams":
        return FlatParams(self.shapes, flat=self.flat.copy())

    def astype(self, dtype) -> "FlatParams":
        return FlatParams(self.shapes, flat=self.flat.astype(dtype))


def init_params(config: TrainConfig, vocab_size: int, rng: np.random.Generator,
                dtype=np.float32) -> FlatParams:
    """PyTorch's default initialisation: every tensor uniform in +-1/sqrt(hidden_size),
    drawn in state_dict order from ``rng`` (the peephole weights too, like the other
    recurrent weights).

    With ``config.forget_bias`` B set, the forget gate's rows of bias_ih are then set to
    B and those of bias_hh to 0, so their sum, which is what the gate sees, starts at B
    (char-rnn and torch-rnn start it at 1: the cells remember by default). The cifg cell
    has no forget gate, f = 1 - i = sigmoid(-a_i): its input gate's rows start at -B, so
    that f starts at sigmoid(B) as well. The draws are the same with and without B, so
    the other tensors do not change.
    """
    params = FlatParams(param_shapes(config, vocab_size), dtype=dtype)
    bound = 1.0 / math.sqrt(config.hidden_size)
    for name, view in params.items():
        view[...] = rng.uniform(-bound, bound, size=view.shape)
    if config.forget_bias is not None:
        block, sign = CELL_TABLE[config.cell].forget_gate
        H = config.hidden_size
        rows = slice(block * H, (block + 1) * H)
        for k in range(config.num_layers):
            params[f"rnn.bias_ih_l{k}"][rows] = sign * config.forget_bias
            params[f"rnn.bias_hh_l{k}"][rows] = 0.0
    return params


def count_params(shapes: dict[str, tuple]) -> int:
    return sum(math.prod(s) for s in shapes.values())
