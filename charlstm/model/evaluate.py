"""Bits per character of a text read as one stream from zero state."""
from __future__ import annotations

import math

import numpy as np

from charlstm.model.network import Network

EVAL_CHUNK = 256


def stream_bits_per_char(net: Network, ids: np.ndarray, chunk: int = EVAL_CHUNK,
                         should_stop=None) -> float:
    """Mean cross-entropy in bits over the len(ids)-1 predictions of ``ids``, read as one
    stream (batch 1) from zero state, carrying the state from chunk to chunk.
    ``should_stop``: a function asked before each chunk; when it returns true the
    reading stops and the result is NaN (a signal, or a time budget, ended it)."""
    n = len(ids) - 1
    if n < 1:
        raise ValueError("need at least two characters to evaluate")
    state = net.zero_state(1)
    total = 0.0
    for start in range(0, n, chunk):
        if should_stop is not None and should_stop():
            return float("nan")
        end = min(start + chunk, n)
        x = ids[start:end].reshape(1, -1)
        y = ids[start + 1:end + 1].reshape(1, -1)
        total += net.loss_sum(x, y, state)
    return total / n / math.log(2)
