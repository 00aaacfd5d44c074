"""Inverted dropout: the mask of one step, made in place from uniform draws.

A unit is kept with probability 1 - p and then scaled by 1 / (1 - p), so its expected
value is unchanged and evaluation (no mask at all) needs no rescaling. The mask holds
those scaled values, so applying it forward and backward is one multiplication.
"""
from .jit import kernel


@kernel
def uniform_to_mask(values, p, scale):
    """values[i] = scale if values[i] >= p else 0, in place; values hold draws in [0, 1)."""
    flat = values.reshape(-1)
    for i in range(flat.size):
        flat[i] = scale if flat[i] >= p else 0.0
