"""Mixed precision: a training step's matrix products with bfloat16 operands.

With ``precision = "bfloat16"`` every matrix product of a training step (the recurrences'
step products, the upper layers' input projections, the decoder, and every gradient
product) takes bfloat16 operands and accumulates in float32. The rest stays float32, as
the mixed-precision papers prescribe (Micikevicius et al., "Mixed Precision Training",
ICLR 2018; Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019): the
master weights and the optimizer's state, the gate nonlinearities, the cell and hidden
state carried from step to step and chunk to chunk, the softmax and the loss, every sum
(bias gradients, peephole gradients, the gradient norm), and layer 0's input, a row
lookup rather than a product. A product's float32 result is never rounded: only its
operands are.

Two implementations of the products (config.bf16_products, STEP/CHUNK):

- ``panels``: charlstm's own VDPBF16PS register blocks (kernels/bf16.py), on CPUs with
  AVX512_BF16;
- ``mkl``: oneMKL's cblas_gemm_bf16bf16f32, and its pack/compute pair for the recurrent
  weights, which runs on AMX tiles where the CPU has them (Intel Sapphire Rapids and
  later) and on AVX512_BF16 elsewhere.

``LowPrecisionWeights`` holds the bfloat16 copies of the weights, made once per step
(after the optimizer's update) and shared, read-only, by the shards of the batch;
``LowPrecisionProducts`` computes one shard's products with them, rounding its
activations into buffers of its own.
"""
from __future__ import annotations

import ctypes

import numpy as np

from charlstm.training.config import parse_bf16_products
from charlstm.kernels import blas_libraries
from charlstm.kernels.bf16 import (PANEL_WIDTH, bf16_product, interleave_rows, pack_panels, pair_count, panel_buffer, panel_count, result_scratch, round_rows)

_F32 = ctypes.c_float


def _plain(rows: int, cols: int) -> np.ndarray:
    """A [rows, pair_count(cols)] uint32 array: ``rows`` rows of ``cols`` bfloat16 values
    (a zero after an odd count), which oneMKL reads as a uint16 matrix with leading
    dimension 2 * pair_count(cols)."""
    return np.empty((rows, pair_count(cols)), np.uint32)


class LowPrecisionWeights:
    """The bfloat16 copies of every weight a training step multiplies by.

    With ``panels`` products, kernels/bf16.py's panels, for both directions of the pass:
    W_hh.T and W_hh of each layer (step products), W_ih.T and W_ih of the layers above
    the first (layer 0's input is a row lookup of float32 weights), W_dec.T and W_dec.
    With ``mkl`` products, each weight rounded once in PyTorch's layout, which oneMKL reads
    transposed or not; the recurrent weights are then packed by oneMKL for each direction
    and each shard's row count (its packing depends on the rows).

    ``refresh()`` rounds and packs them from the float32 parameters: once per step,
    before the step's passes (ShardedNetwork), and nowhere else.
    """

    def __init__(self, params, num_layers: int, products: str = "panels/panels"):
        self.params = params
        self.num_layers = num_layers
        self.step_kind, self.chunk_kind = parse_bf16_products(products)
        GH, H = params["rnn.weight_hh_l0"].shape
        V = params["decoder.weight"].shape[0]
        self.H, self.GH, self.V = H, GH, V
        self.mkl = None
        if "mkl" in (self.step_kind, self.chunk_kind):
            self.mkl = blas_libraries.load("mkl")
            if not self.mkl.has_bf16:
                raise blas_libraries.LibraryUnavailable(
                    f"{self.mkl.describe()} has no bfloat16 GEMM; upgrade it "
                    f"(pip install -U 'charlstm[mkl]')")
        L = range(num_layers)
        if self.step_kind == "mkl":
            from charlstm.kernels.blas import BLAS

            BLAS.bind_bf16_compute()  # before a cell kernel compiles the packed products
        if self.step_kind == "panels":
            self.hh_forward = [panel_buffer(H, GH) for _ in L]
            self.hh_backward = [panel_buffer(GH, H) for _ in L]
        else:
            self.hh_plain = [_plain(GH, H) for _ in L]
            self._hh_packed: dict[tuple, np.ndarray] = {}  # (layer, forward, rows) -> buffer
        if self.chunk_kind == "panels":
            self.ih_forward = [panel_buffer(H, GH) if k else None for k in L]
            self.ih_backward = [panel_buffer(GH, H) if k else None for k in L]
            self.decoder_forward, self.decoder_backward = panel_buffer(H, V), panel_buffer(V, H)
        else:
            self.ih_plain = [_plain(GH, H) if k else None for k in L]
            self.decoder_plain = _plain(V, H)

    def refresh(self) -> None:
        """Round and pack every weight from the current float32 parameters."""
        p = self.params
        for k in range(self.num_layers):
            w_hh = p[f"rnn.weight_hh_l{k}"]
            if self.step_kind == "panels":
                pack_panels(w_hh, self.hh_forward[k], True)
                pack_panels(w_hh, self.hh_backward[k], False)
            else:
                round_rows(w_hh, self.hh_plain[k])
            if k > 0:
                w_ih = p[f"rnn.weight_ih_l{k}"]
                if self.chunk_kind == "panels":
                    pack_panels(w_ih, self.ih_forward[k], True)
                    pack_panels(w_ih, self.ih_backward[k], False)
                else:
                    round_rows(w_ih, self.ih_plain[k])
        if self.chunk_kind == "panels":
            pack_panels(p["decoder.weight"], self.decoder_forward, True)
            pack_panels(p["decoder.weight"], self.decoder_backward, False)
        else:
            round_rows(p["decoder.weight"], self.decoder_plain)
        if self.step_kind == "mkl":
            for key, buffer in self._hh_packed.items():
                self._mkl_pack(*key, buffer)

    def mkl_packed(self, k: int, forward: bool, rows: int) -> np.ndarray:
        """Layer k's W_hh packed by oneMKL as the B operand of the step products of
        ``rows`` rows (of ``h @ W_hh.T`` if ``forward``, else of ``dpre @ W_hh``); packed
        now the first time, then by every ``refresh``."""
        key = (k, forward, rows)
        buffer = self._hh_packed.get(key)
        if buffer is None:
            n, kk = (self.GH, self.H) if forward else (self.H, self.GH)
            buffer = np.empty(-(-self.mkl.bf16_pack_size(rows, n, kk) // 64) * 64, np.uint8)
            self._mkl_pack(k, forward, rows, buffer)
            self._hh_packed[key] = buffer
        return buffer

    def _mkl_pack(self, k: int, forward: bool, rows: int, buffer: np.ndarray) -> None:
        plain = self.hh_plain[k]  # W_hh [GH, H], rounded
        n, kk = (self.GH, self.H) if forward else (self.H, self.GH)
        pack = blas_libraries.BF16_PACK_PROTOTYPE(self.mkl.bf16["pack"])
        pack(blas_libraries.ROW_MAJOR, blas_libraries.PACK_B,
             blas_libraries.TRANS if forward else blas_libraries.NO_TRANS, rows, n, kk,
             plain.ctypes.data, 2 * plain.shape[1], buffer.ctypes.data)


class LowPrecisionProducts:
    """One shard's bfloat16 products for a (T, B) chunk: the weights' copies
    (``LowPrecisionWeights``, shared), and the buffers this shard rounds its activations
    into, allocated once. Every method leaves float32 results where it is told."""

    def __init__(self, weights: LowPrecisionWeights, T: int, B: int):
        self.w = weights
        H, GH, V = weights.H, weights.GH, weights.V
        N = T * B
        self.N, self.B = N, B
        widest = max(H, GH, V)
        self.h_pairs = np.empty((B, pair_count(H)), np.uint32)
        self.dpre_pairs = np.empty((B, pair_count(GH)), np.uint32)
        self.scratch = result_scratch()
        # The gate gradient last rounded (or packed): the next product reuses it.
        self._rounded_gradient = self._packed_gradient = None
        self._rows = np.empty(N * pair_count(widest), np.uint32)
        if weights.chunk_kind == "panels":
            self.interleaved = np.empty((pair_count(N), H), np.uint32)
            self._panels = panel_buffer(N, widest).reshape(-1)
        else:
            self._rows2 = np.empty(N * pair_count(H), np.uint32)
            self._gemm = blas_libraries.BF16_GEMM_PROTOTYPE(weights.mkl.bf16["gemm"])

    # -- buffers ------------------------------------------------------------------------
    def rows(self, cols: int, second: bool = False) -> np.ndarray:
        """[T*B, pair_count(cols)]: a chunk's rows of ``cols`` values, rounded."""
        flat = self._rows2 if second else self._rows
        return flat[:self.N * pair_count(cols)].reshape(self.N, pair_count(cols))

    def _long_panels(self, cols: int) -> np.ndarray:
        """Panels of a [T*B, cols] right operand (kernels/bf16.py layout)."""
        size = panel_count(cols) * pair_count(self.N) * PANEL_WIDTH
        return self._panels[:size].reshape(-1, PANEL_WIDTH)

    def _mkl(self, a, trans_a, b, trans_b, out, m, n, k, beta=0.0):
        """out = op(a) @ op(b) (+ beta out) through oneMKL, a and b uint16 matrices held in
        pair arrays (leading dimension twice their width)."""
        self._gemm(blas_libraries.ROW_MAJOR,
                   blas_libraries.TRANS if trans_a else blas_libraries.NO_TRANS,
                   blas_libraries.TRANS if trans_b else blas_libraries.NO_TRANS, m, n, k,
                   _F32(1.0), a.ctypes.data, 2 * a.shape[1], b.ctypes.data, 2 * b.shape[1],
                   _F32(beta), out.ctypes.data, out.shape[1])

    # -- the recurrences' step products ---------------------------------------------------
    def step_weight(self, k: int, forward: bool):
        """What a cell kernel takes as weight_hh for bfloat16 step products (see
        kernels/blas.recurrent_forward): (panels, pairs, scratch), or for oneMKL's
        packed products (packed, pairs, scratch, 0)."""
        pairs = self.h_pairs if forward else self.dpre_pairs
        if self.w.step_kind == "panels":
            panels = self.w.hh_forward[k] if forward else self.w.hh_backward[k]
            return panels, pairs, self.scratch
        return self.w.mkl_packed(k, forward, self.B), pairs, self.scratch, 0

    # -- the chunk products -----------------------------------------------------------------
    def input_projection(self, k: int, x: np.ndarray, out: np.ndarray) -> None:
        """out [N, G*H] = x [N, H] @ W_ih.T of layer k >= 1."""
        a = self.rows(self.w.H)
        round_rows(x, a)
        if self.w.chunk_kind == "panels":
            bf16_product(a, False, self.w.ih_forward[k], out, self.scratch, False)
        else:
            self._mkl(a, False, self.w.ih_plain[k], True, out, self.N, self.w.GH, self.w.H)

    def decoder(self, x: np.ndarray, out: np.ndarray) -> None:
        """out [N, V] = x [N, H] @ W_dec.T."""
        a = self.rows(self.w.H)
        round_rows(x, a)
        if self.w.chunk_kind == "panels":
            bf16_product(a, False, self.w.decoder_forward, out, self.scratch, False)
        else:
            self._mkl(a, False, self.w.decoder_plain, True, out, self.N, self.w.V, self.w.H)

    def decoder_backward(self, dlogits, top, weight_grad, dh) -> None:
        """weight_grad [V, H] = dlogits.T @ top and dh [N, H] = dlogits [N, V] @ W_dec."""
        H, V, N = self.w.H, self.w.V, self.N
        d = self.rows(V)
        if self.w.chunk_kind == "panels":
            # dW = (top.T @ dlogits).T: top interleaved, dlogits packed along its rows.
            interleave_rows(top[:0], top, self.interleaved)
            panels = self._long_panels(V)
            pack_panels(dlogits, panels, False)
            bf16_product(self.interleaved, True, panels, weight_grad, self.scratch, True)
            round_rows(dlogits, d)
            bf16_product(d, False, self.w.decoder_backward, dh, self.scratch, False)
        else:
            round_rows(dlogits, d)
            x = self.rows(H, second=True)
            round_rows(top, x)
            self._mkl(d, True, x, False, weight_grad, V, H, N)
            self._mkl(d, False, self.w.decoder_plain, False, dh, N, H, V)

    def recurrent_weight_gradient(self, drec, h0, hs_before_last, weight_grad) -> None:
        """weight_grad [G*H, H] = sum_t drec_t.T @ h_{t-1}: drec [N, G*H] against the
        chunk's h_{t-1} rows, h0 [B, H] then hs_before_last [(T-1)*B, H]."""
        H, GH, N, B = self.w.H, self.w.GH, self.N, self.B
        if self.w.chunk_kind == "panels":
            interleave_rows(h0, hs_before_last, self.interleaved)
            panels = self._long_panels(GH)
            pack_panels(drec, panels, False)
            bf16_product(self.interleaved, True, panels, weight_grad, self.scratch, True)
            self._packed_gradient = drec
        else:
            d = self.rows(GH)
            round_rows(drec, d)
            x = self.rows(H, second=True)
            round_rows(h0, x[:B])
            round_rows(hs_before_last, x[B:])
            self._mkl(d, True, x, False, weight_grad, GH, H, N)
            self._rounded_gradient = drec

    def input_weight_gradient(self, dpre, below, weight_grad) -> None:
        """weight_grad [G*H, H] = dpre.T @ below of a layer k >= 1; after
        ``recurrent_weight_gradient``, whose rounded gradient it reuses when ``dpre`` is
        the same array (every cell but the GRU)."""
        H, GH, N = self.w.H, self.w.GH, self.N
        if self.w.chunk_kind == "panels":
            panels = self._long_panels(GH)
            if self._packed_gradient is not dpre:
                pack_panels(dpre, panels, False)
                self._packed_gradient = dpre
            interleave_rows(below[:0], below, self.interleaved)
            bf16_product(self.interleaved, True, panels, weight_grad, self.scratch, True)
        else:
            d = self.rows(GH)
            if self._rounded_gradient is not dpre:
                round_rows(dpre, d)
                self._rounded_gradient = dpre
            x = self.rows(H, second=True)
            round_rows(below, x)
            self._mkl(d, True, x, False, weight_grad, GH, H, N)

    def input_gradient(self, k: int, dpre, dx) -> None:
        """dx [N, H] = dpre [N, G*H] @ W_ih of layer k >= 1."""
        H, GH, N = self.w.H, self.w.GH, self.N
        d = self.rows(GH)
        if self.w.chunk_kind == "panels":
            round_rows(dpre, d)
            bf16_product(d, False, self.w.ih_backward[k], dx, self.scratch, False)
        else:
            if self._rounded_gradient is not dpre:
                round_rows(dpre, d)
                self._rounded_gradient = dpre
            self._mkl(d, False, self.w.ih_plain[k], False, dx, N, H, GH)
