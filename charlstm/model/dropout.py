"""Dropout masks of training steps, drawn from the run's generator.

Dropout sits where PyTorch's ``nn.LSTM(dropout=p)`` followed by ``nn.Dropout(p)`` before
the decoder puts it: on every layer's output as the next layer (or the decoder) reads it.
The recurrent connection inside a layer is never masked, and the state carried to the
next chunk is the unmasked one. The masks come from the run's generator, whose state is
in every checkpoint, so a resumed run draws the masks it would have drawn.
"""
from __future__ import annotations

import numpy as np

from charlstm.kernels.dropout import uniform_to_mask


class DropoutMasks:
    """A reusable [num_layers, T, B, H] buffer of scaled masks, time-major like the
    network's activations; ``masks[k]`` multiplies layer k's output."""

    def __init__(self, p: float, num_layers: int, T: int, B: int, H: int, dtype=np.float32):
        if not 0.0 < p < 1.0:
            raise ValueError(f"dropout probability must be in (0, 1), not {p}")
        self.p = float(p)
        self.scale = 1.0 / (1.0 - self.p)
        self.masks = np.empty((num_layers, T, B, H), dtype)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Fresh masks for one step (overwrites the previous ones)."""
        rng.random(dtype=self.masks.dtype, out=self.masks)
        uniform_to_mask(self.masks, self.p, self.scale)
        return self.masks
