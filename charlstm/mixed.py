"""Mixed precision: a training step's matrix products with bfloat16 operands.

With ``precision = "bfloat16"`` every matrix product of a training step (the recurrences'
step products, the upper layers' input projections, the decoder, and every gradient
product) takes bfloat16 operands and accumulates in float32 (kernels/bf16.py). The rest
stays float32, as the mixed-precision papers prescribe (Micikevicius et al. 2018;
Kalamkar et al. 2019): the master weights and the optimizer's state, the gate
nonlinearities, the cell and hidden state carried from step to step and chunk to chunk,
the softmax and the loss, every sum (bias gradients, peephole gradients, the gradient
norm), and layer 0's input, a row lookup rather than a product. A product's float32
result is never rounded: only its operands are.

``LowPrecisionWeights`` holds the bfloat16 copies of the weights, made once per step
(after the optimizer's update) and shared, read-only, by the shards of the batch;
``LowPrecisionBuffers`` holds what one shard rounds its activations into.
"""
from __future__ import annotations

import numpy as np

from .kernels.bf16 import (PANEL_WIDTH, pack_panels, pair_count, panel_buffer, panel_count,
                           result_scratch)


class LowPrecisionWeights:
    """The bfloat16 panels (kernels/bf16.py) of every weight a training step multiplies
    by, for both directions of the pass:

    - ``hh_forward[k]`` = W_hh.T and ``hh_backward[k]`` = W_hh of layer k (the step
      products ``h @ W_hh.T`` and ``dpre @ W_hh``);
    - ``ih_forward[k]`` = W_ih.T and ``ih_backward[k]`` = W_ih for k >= 1 (layer 0's input
      is a row lookup of float32 weights; None there);
    - ``decoder_forward`` = W_dec.T and ``decoder_backward`` = W_dec.

    ``refresh()`` rounds and packs them from the float32 parameters: once per step,
    before the step's passes (ShardedNetwork), and nowhere else.
    """

    def __init__(self, params, num_layers: int):
        self.params = params
        self.num_layers = num_layers
        self.hh_forward, self.hh_backward = [], []
        self.ih_forward, self.ih_backward = [], []
        for k in range(num_layers):
            GH, H = params[f"rnn.weight_hh_l{k}"].shape
            self.hh_forward.append(panel_buffer(H, GH))
            self.hh_backward.append(panel_buffer(GH, H))
            upper = k > 0
            self.ih_forward.append(panel_buffer(H, GH) if upper else None)
            self.ih_backward.append(panel_buffer(GH, H) if upper else None)
        V, H = params["decoder.weight"].shape
        self.decoder_forward = panel_buffer(H, V)
        self.decoder_backward = panel_buffer(V, H)

    def refresh(self) -> None:
        """Round and pack every weight from the current float32 parameters."""
        p = self.params
        for k in range(self.num_layers):
            w_hh = p[f"rnn.weight_hh_l{k}"]
            pack_panels(w_hh, self.hh_forward[k], True)
            pack_panels(w_hh, self.hh_backward[k], False)
            if k > 0:
                w_ih = p[f"rnn.weight_ih_l{k}"]
                pack_panels(w_ih, self.ih_forward[k], True)
                pack_panels(w_ih, self.ih_backward[k], False)
        pack_panels(p["decoder.weight"], self.decoder_forward, True)
        pack_panels(p["decoder.weight"], self.decoder_backward, False)


class LowPrecisionBuffers:
    """What one shard rounds its activations into for a (T, B) chunk: the step
    products' rows (``h_pairs`` [B, pairs of H], ``dpre_pairs`` [B, pairs of G*H]), a
    chunk's rows for a product in the "rows" layout (``rows(cols)``: [T*B, pairs of cols]),
    its transpose in the "interleaved" one (``interleaved`` [pairs of T*B, H]), a chunk's
    gradient packed as a right operand (``long_panels(cols)``), and the products' result
    scratch. Views of a few flat buffers, allocated once."""

    def __init__(self, T: int, B: int, H: int, GH: int, V: int):
        N = T * B
        widest = max(H, GH, V)
        self.h_pairs = np.empty((B, pair_count(H)), np.uint32)
        self.dpre_pairs = np.empty((B, pair_count(GH)), np.uint32)
        self.scratch = result_scratch()
        self._rows = np.empty(N * pair_count(widest), np.uint32)
        self.interleaved = np.empty((pair_count(N), H), np.uint32)
        self._panels = panel_buffer(N, widest).reshape(-1)
        self.N = N

    def rows(self, cols: int) -> np.ndarray:
        """[T*B, pair_count(cols)]: a chunk's rows of ``cols`` values, rounded."""
        return self._rows[:self.N * pair_count(cols)].reshape(self.N, pair_count(cols))

    def long_panels(self, cols: int) -> np.ndarray:
        """Panels of a [T*B, cols] right operand (kernels/bf16.py layout)."""
        size = panel_count(cols) * pair_count(self.N) * PANEL_WIDTH
        return self._panels[:size].reshape(-1, PANEL_WIDTH)
