"""A stack of recurrent layers and a decoder, run over one chunk of a batch.

This module only orchestrates: the time loops are the Numba kernels in ``kernels/``; the
projections that do not depend on the recurrence (inputs of all T steps, decoder,
weight gradients) are single GEMMs over all T*B rows, done here by NumPy's BLAS.
Arrays are time-major ([T, B, ...]) so each step's slice is contiguous.

The GRU is the one cell whose two biases cannot be summed into the input projection:
bias_hh's candidate (n) rows sit inside ``r * (h W_hn^T + b_hn)``, so the projection
carries only bias_hh's r and z rows and the kernel adds the n rows (see kernels/gru.py).
The peephole cell's diagonal weights enter in its gate pass (kernels/peephole.py), and
their gradients are one reduction each over the chunk.
"""
from __future__ import annotations

import numpy as np

from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import TrainConfig
from charlstm.errors import UserError
from charlstm.kernels import blas as blas_module
from charlstm.kernels.blas import (BLAS, STEP_LAYOUTS, matmul_nn, matmul_nt, matmul_tn, transpose_into)
from charlstm.kernels.onehot import onehot_backward, onehot_forward
from charlstm.kernels.panels import pack_panels, panel_buffer
from charlstm.kernels.softmax import softmax_xent_grad, softmax_xent_loss
from charlstm.model.mixed import LowPrecisionProducts, LowPrecisionWeights
from charlstm.model.parameters import FlatParams


class Workspace:
    """Preallocated activations and gradient scratch for one (T, B) chunk shape."""

    def __init__(self, T: int, B: int, num_layers: int, H: int, G: int, V: int, dtype,
                 cell: str):
        N = T * B
        # xproj holds each layer's input projection in the forward pass and is reused for
        # the gradient of the gate pre-activations in the backward pass.
        self.xproj = [np.empty((T, B, G * H), dtype) for _ in range(num_layers)]
        self.hs = [np.empty((T, B, H), dtype) for _ in range(num_layers)]
        kernels = CELL_TABLE[cell].kernels()  # the buffers the cell's kernels use
        for name, width in kernels.LAYER_BUFFERS.items():
            setattr(self, name, [np.empty((T, B, width * H), dtype) for _ in range(num_layers)])
        for name, (shape, width) in kernels.SHARED_BUFFERS.items():
            setattr(self, name, np.empty((T, B, width * H) if shape == "steps" else (B, width * H), dtype))
        # Layer outputs as the layer above (or the decoder) reads them under dropout:
        # allocated on the first masked pass, so runs without dropout pay nothing.
        self.dropped: list | None = None
        self.h0 = np.empty((num_layers, B, H), dtype)
        self.c0 = np.empty((num_layers, B, H), dtype)
        self.dh0 = np.zeros((num_layers, B, H), dtype)
        self.dc0 = np.zeros((num_layers, B, H), dtype)
        self.dhs = np.empty((T, B, H), dtype)
        self.logits = np.empty((N, V), dtype)
        self.table = np.empty((V, G * H), dtype)
        self.ids = np.empty(N, np.int32)
        self.targets = np.empty(N, np.int32)


class Network:
    """Runs forward and backward passes of one model over chunks of characters.

    ``params`` and ``grads`` are FlatParams with PyTorch state_dict names; the dtype of
    ``params`` (float32 to train, float64 for gradient checks) is the dtype of every
    activation.

    With ``config.precision == "bfloat16"`` (and float32 parameters) the products of
    ``loss_and_grad`` take bfloat16 operands (mixed.py); ``loss_sum``, which evaluation
    reads, stays float32. ``low_precision_weights``: the bfloat16 copies of the weights,
    shared with the other shards of a batch, which the caller refreshes once per step
    (ShardedNetwork); without it the network keeps its own and refreshes them on every
    ``loss_and_grad``.
    """

    def __init__(self, config: TrainConfig, vocab_size: int, params: FlatParams,
                 low_precision_weights: LowPrecisionWeights | None = None):
        self.cell = config.cell
        self.has_cell_state = CELL_TABLE[config.cell].has_cell_state
        self.kernels = CELL_TABLE[config.cell].kernels()
        # bias_hh rows the cell adds inside its kernel (the GRU's n rows, inside r * (...)),
        # so not folded into the input projection with the other biases.
        self.bias_hh_rows_inside = CELL_TABLE[config.cell].bias_hh_rows_inside
        self.num_layers = config.num_layers
        self.H = config.hidden_size
        self.G = config.gates
        self.V = vocab_size
        self.params = params
        self.dtype = params.flat.dtype
        self.grads = params.zeros_like()
        self._workspaces: dict[tuple, Workspace] = {}
        # Which copy of weight_hh each direction's step products read (config.step_weights):
        # a transposed copy is refreshed by every forward pass, a packed one by every pass
        # of its direction, since the optimizer changes the weights between passes.
        self.fwd_layout, self.bwd_layout = config.step_layouts
        if "packed" in (self.fwd_layout, self.bwd_layout) and not BLAS.step_packs:
            raise UserError(f"step weights {config.step_weights} need a step library that "
                            f"packs weights (mkl); this process runs {BLAS.spec}")
        self._w_hh_t = None
        if "transposed" in (self.fwd_layout, self.bwd_layout):
            pad = blas_module.TRANSPOSED_PAD  # read here so a benchmark can set it
            self._w_hh_t = [np.empty((self.H, self.G * self.H + pad), self.dtype)
                            for _ in range(self.num_layers)]
        self._packed: dict[tuple, np.ndarray] = {}  # (layer, forward, rows) -> buffer
        self._panels: dict[tuple, np.ndarray] = {}  # (layer, forward) -> panel buffer
        self.low_precision = config.precision == "bfloat16" and self.dtype == np.float32
        self._owns_low_precision_weights = self.low_precision and low_precision_weights is None
        if self._owns_low_precision_weights:
            low_precision_weights = LowPrecisionWeights(params, self.num_layers,
                                                        config.bf16_products)
        self.low_precision_weights = low_precision_weights if self.low_precision else None
        self._low_precision_products: dict[tuple, LowPrecisionProducts] = {}

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        """The carried state of ``batch`` streams at zero: [num_layers, batch, H] per key
        of the cell's state (cells.py)."""
        return {key: np.zeros((self.num_layers, batch, self.H), self.dtype)
                for key in CELL_TABLE[self.cell].state}

    def workspace(self, T: int, B: int) -> Workspace:
        key = (T, B)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = Workspace(T, B, self.num_layers, self.H, self.G, self.V, self.dtype, self.cell)
            self._workspaces[key] = ws
        return ws

    def low_precision_products(self, T: int, B: int) -> LowPrecisionProducts:
        """The bfloat16 products of a (T, B) chunk, with this network's buffers."""
        key = (T, B)
        products = self._low_precision_products.get(key)
        if products is None:
            products = LowPrecisionProducts(self.low_precision_weights, T, B)
            self._low_precision_products[key] = products
        return products

    def _step_weight(self, k: int, layout: str, forward: bool, rows: int):
        """Layer k's weight_hh as one direction's step products read it, and the kernels'
        code for that copy; a packed copy is packed here, for ``rows`` rows, and panels
        here too (of W_hh.T for the forward, of W_hh for the backward)."""
        w_hh = self.params[f"rnn.weight_hh_l{k}"]
        if layout == "panels":
            key = (k, forward)
            if key not in self._panels:
                GH, H = w_hh.shape
                k_dim, n_dim = (H, GH) if forward else (GH, H)
                self._panels[key] = panel_buffer(k_dim, n_dim, self.dtype)
            pack_panels(w_hh, self._panels[key], forward)
            return self._panels[key], STEP_LAYOUTS[layout]
        if layout == "transposed":
            return self._w_hh_t[k], STEP_LAYOUTS[layout]
        if layout == "packed":
            key = (k, forward, rows)
            if key not in self._packed:
                self._packed[key] = BLAS.packed_buffer(w_hh.shape, self.dtype, forward, rows)
            BLAS.pack_step_weight(w_hh, self._packed[key], forward, rows)
            return self._packed[key], STEP_LAYOUTS[layout]
        return w_hh, STEP_LAYOUTS["stored"]

    def peepholes(self, k: int, tensors: FlatParams | None = None) -> list:
        """Layer k's peephole weights (weight_ci, weight_cf, weight_co), of the parameters
        or of ``tensors`` (the gradients, say); [] for a cell without them."""
        tensors = self.params if tensors is None else tensors
        return [tensors[f"rnn.{name}_l{k}"] for name in CELL_TABLE[self.cell].peepholes]

    # -- passes --------------------------------------------------------------------
    def forward(self, inputs: np.ndarray, state: dict, masks=None,
                low_precision: bool = False) -> Workspace:
        """Run all layers and the decoder over ``inputs`` [B, T]; leave logits in the
        workspace and carry the final state into ``state`` (in place).

        ``masks`` (training with dropout only): [num_layers, T, B, H] scaled dropout
        masks (see dropout.py); ``masks[k]`` multiplies layer k's output where the layer
        above or the decoder reads it. None: no dropout, as in evaluation and sampling.
        ``low_precision``: the products take bfloat16 operands (a bfloat16 network's
        training pass, with its weights refreshed).
        """
        B, T = inputs.shape
        ws = self.workspace(T, B)
        low = self.low_precision_products(T, B) if low_precision else None
        if masks is not None and ws.dropped is None:
            ws.dropped = [np.empty_like(h) for h in ws.hs]
        p = self.params
        np.copyto(ws.ids, inputs.T.reshape(-1))
        ws.h0[...] = state["h"]
        if self.has_cell_state:
            ws.c0[...] = state["c"]
        N = T * B
        x = None
        for k in range(self.num_layers):
            xproj = ws.xproj[k]
            xproj2d = xproj.reshape(N, -1)
            b_hh = p[f"rnn.bias_hh_l{k}"]
            bias = p[f"rnn.bias_ih_l{k}"] + b_hh
            if self.bias_hh_rows_inside:  # the kernel adds bias_hh's last H rows itself
                bias[-self.H:] = p[f"rnn.bias_ih_l{k}"][-self.H:]
            if k == 0:
                np.add(p["rnn.weight_ih_l0"].T, bias, out=ws.table)
                onehot_forward(ws.table, ws.ids, xproj2d)
            elif low is not None:
                low.input_projection(k, x, xproj2d)
                xproj2d += bias
            else:
                matmul_nt(x, p[f"rnn.weight_ih_l{k}"], xproj2d)
                xproj2d += bias
            if low is not None:
                w_hh, layout = low.step_weight(k, True), 0
            else:
                if self._w_hh_t is not None:
                    transpose_into(p[f"rnn.weight_hh_l{k}"], self._w_hh_t[k])
                w_hh, layout = self._step_weight(k, self.fwd_layout, True, B)
            self.kernels.layer_forward(ws, k, xproj, w_hh, layout, b_hh, self.peepholes(k))
            state["h"][k] = ws.hs[k][T - 1]
            if self.has_cell_state:
                state["c"][k] = ws.cs[k][T - 1]
            if masks is None:
                x = ws.hs[k].reshape(N, self.H)
            else:
                np.multiply(ws.hs[k], masks[k], out=ws.dropped[k])
                x = ws.dropped[k].reshape(N, self.H)
        if low is not None:
            low.decoder(x, ws.logits)
        else:
            matmul_nt(x, p["decoder.weight"], ws.logits)
        ws.logits += p["decoder.bias"]
        return ws

    def loss_sum(self, inputs: np.ndarray, targets: np.ndarray, state: dict, masks=None) -> float:
        """Summed natural-log cross-entropy of the chunk; carries ``state``; no gradients."""
        ws = self.forward(inputs, state, masks)
        np.copyto(ws.targets, targets.T.reshape(-1))
        return softmax_xent_loss(ws.logits, ws.targets)

    def loss_and_grad(self, inputs: np.ndarray, targets: np.ndarray, state: dict,
                      masks=None, mean_over: int | None = None) -> float:
        """Mean natural-log cross-entropy over the B*T predictions of the chunk.

        Fills ``self.grads`` with its gradient, carries ``state`` to the chunk's end,
        and leaves the gradient with respect to the initial state in the workspace
        (``dh0``, ``dc0``). The gradient is cut at the chunk's start: truncated BPTT.
        ``masks``: as in ``forward``; the gradient is that of the masked network.
        ``mean_over``: divide the summed loss by this count instead of B*T; a shard of a
        batch divides by the whole batch's count, so the shards' results add up.
        """
        B, T = inputs.shape
        N = T * B if mean_over is None else mean_over
        if self._owns_low_precision_weights:
            self.low_precision_weights.refresh()
        ws = self.forward(inputs, state, masks, self.low_precision)
        np.copyto(ws.targets, targets.T.reshape(-1))
        loss_sum = softmax_xent_grad(ws.logits, ws.targets, 1.0 / N)
        self._backward(ws, T, B, masks)
        return loss_sum / N

    def _backward(self, ws: Workspace, T: int, B: int, masks) -> None:
        p, g = self.params, self.grads
        N, H = T * B, self.H
        low = self.low_precision_products(T, B) if self.low_precision else None
        # What each layer's output was as read above it: masked under dropout.
        outputs = ws.hs if masks is None else ws.dropped
        dlogits = ws.logits
        top = outputs[-1].reshape(N, H)
        dhs2d = ws.dhs.reshape(N, H)
        if low is not None:
            low.decoder_backward(dlogits, top, g["decoder.weight"], dhs2d)
        else:
            matmul_tn(dlogits, top, g["decoder.weight"])
            matmul_nn(dlogits, p["decoder.weight"], dhs2d)
        np.sum(dlogits, axis=0, out=g["decoder.bias"])
        for k in range(self.num_layers - 1, -1, -1):
            if masks is not None:
                ws.dhs *= masks[k]  # gradient of the masked output -> of the output itself
            dpre = ws.xproj[k]  # the forward's projection is dead: reuse its memory
            dh, dc = ws.dh0[k], ws.dc0[k]
            dh[...] = 0.0
            dc[...] = 0.0
            if low is not None:
                w_hh, layout = low.step_weight(k, False), 0
            else:
                w_hh, layout = self._step_weight(k, self.bwd_layout, False, B)
            # The gradient of the recurrent product h W_hh^T + b_hh: dpre's, but for the
            # GRU, whose candidate rows are scaled by r on the recurrent side.
            drec = self.kernels.layer_backward(ws, k, w_hh, layout, dh, dc, dpre,
                                               self.peepholes(k), self.peepholes(k, g))
            GH = dpre.shape[2]
            dpre2d = dpre.reshape(N, GH)
            drec2d = drec.reshape(N, GH)
            hs = ws.hs[k]
            g_hh = g[f"rnn.weight_hh_l{k}"]
            if low is not None:
                low.recurrent_weight_gradient(drec2d, ws.h0[k], hs[:-1].reshape(-1, H), g_hh)
            else:
                # sum_t drec_t^T h_{t-1}: steps 1..T-1 in one GEMM, step 0 against h0.
                matmul_tn(drec[1:].reshape(-1, GH), hs[:-1].reshape(-1, H), g_hh)
                matmul_tn(drec[0], ws.h0[k], g_hh, 1.0)
            np.sum(dpre2d, axis=0, out=g[f"rnn.bias_ih_l{k}"])
            if drec is not dpre:
                np.sum(drec2d, axis=0, out=g[f"rnn.bias_hh_l{k}"])
            else:
                g[f"rnn.bias_hh_l{k}"][...] = g[f"rnn.bias_ih_l{k}"]
            if k == 0:
                onehot_backward(dpre2d, ws.ids, ws.table)
                g["rnn.weight_ih_l0"][...] = ws.table.T
            elif low is not None:
                low.input_weight_gradient(dpre2d, outputs[k - 1].reshape(N, H),
                                          g[f"rnn.weight_ih_l{k}"])
                low.input_gradient(k, dpre2d, dhs2d)
            else:
                below = outputs[k - 1].reshape(N, H)
                w_ih = p[f"rnn.weight_ih_l{k}"]
                matmul_tn(dpre2d, below, g[f"rnn.weight_ih_l{k}"])
                matmul_nn(dpre2d, w_ih, dhs2d)
