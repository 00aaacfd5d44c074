"""Generating text from a checkpoint, streamed in chunks from a compiled kernel."""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint
from .cells import CELL_TABLE
from .kernels.sampling import generate

STREAM_CHUNK = 32  # characters per kernel call: small enough to stream, large enough to be cheap


class Sampler:
    """Holds a model's weights in the stacked layout the sampling kernel reads, and the
    batch-1 state it carries."""

    def __init__(self, ckpt: Checkpoint):
        cfg = ckpt.config
        p = ckpt.params
        L, H, G = cfg.num_layers, cfg.hidden_size, cfg.gates
        self.vocab = ckpt.vocab
        self.cell = CELL_TABLE[cfg.cell].sampling_code
        # The GRU's bias_hh n rows sit inside r * (h W_hn^T + b_hn): they cannot be folded
        # into the input side with the other biases, so they are kept apart in bias_hn
        # (zeros and unused for the other cells).
        cell = CELL_TABLE[cfg.cell]
        inside = cell.bias_hh_rows_inside
        self.bias_hn = np.zeros((L, H), np.float32)
        if inside:
            for k in range(L):
                self.bias_hn[k] = p[f"rnn.bias_hh_l{k}"][2 * H:]
        # The peephole cell's diagonal weights, [L, 3, H] (zeros and unused for the others).
        self.peepholes = np.zeros((L, 3, H), np.float32)
        for k in range(L):
            for n, name in enumerate(cell.peepholes):
                self.peepholes[k, n] = p[f"rnn.{name}_l{k}"]

        def bias_hh_input_side(k):
            """bias_hh as the input side adds it: all of it, for the GRU without n rows."""
            b_hh = p[f"rnn.bias_hh_l{k}"]
            if inside:
                b_hh = b_hh.copy()
                b_hh[2 * H:] = 0.0
            return b_hh

        self.table0 = np.ascontiguousarray(
            p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"] + bias_hh_input_side(0))
        self.w_ih_t = np.zeros((max(L - 1, 1), H, G * H), np.float32)
        self.bias = np.zeros((max(L - 1, 1), G * H), np.float32)
        for k in range(1, L):
            self.w_ih_t[k - 1] = p[f"rnn.weight_ih_l{k}"].T
            self.bias[k - 1] = p[f"rnn.bias_ih_l{k}"] + bias_hh_input_side(k)
        # C order: np.stack of transposes (and astype, which keeps strides) is neither C-
        # nor F-contiguous, and the kernel's np.dot would copy each layer's matrix per step.
        self.w_hh_t = np.ascontiguousarray(
            np.stack([p[f"rnn.weight_hh_l{k}"].T for k in range(L)]), dtype=np.float32)
        self.dec_w_t = np.ascontiguousarray(p["decoder.weight"].T)
        self.dec_b = p["decoder.bias"].copy()
        self.h = np.zeros((L, 1, H), np.float32)
        self.c = np.zeros((L, 1, H), np.float32)
        self.next_input = None

    def encode(self, text: str) -> np.ndarray:
        self.vocab.require_covers(text, "the prime text", "remove them or choose another prime")
        return self.vocab.encode(text).astype(np.int64)

    def reset(self) -> None:
        """Zero the state (and forget the next input), as before the first prime."""
        self.h[...] = 0.0
        self.c[...] = 0.0
        self.next_input = None

    def prime(self, text: str, rng: np.random.Generator) -> None:
        """Warm the state, from zero, on ``text``. With no text, a newline (if the
        vocabulary has one) or else a random character starts the sample. Priming again
        starts a new sample from the same point."""
        self.reset()
        if text:
            ids = self.encode(text)
        elif "\n" in self.vocab.index:
            ids = np.array([self.vocab.index["\n"]], np.int64)
        else:
            ids = np.array([rng.integers(len(self.vocab))], np.int64)
        self._run(ids[:-1], int(ids[-1]), np.zeros(0), 0.0, 0, 1.0, np.zeros(0, np.int64))
        self.next_input = int(ids[-1])

    def _run(self, feed, first, uniforms, temperature, top_k, top_p, out):
        return generate(self.cell, self.table0, self.w_ih_t, self.bias, self.w_hh_t,
                        self.bias_hn, self.peepholes, self.dec_w_t, self.dec_b, self.h, self.c,
                        feed, first, uniforms, float(temperature), int(top_k), float(top_p), out)

    def check_stop(self, stop: str) -> None:
        """Refuse a stop string the model could never generate."""
        self.vocab.require_covers(stop, "the stop string", "it could never be generated")

    def stream(self, length: int, temperature: float, top_k: int, rng: np.random.Generator,
               top_p: float = 1.0):
        """Yield the generated text in chunks of STREAM_CHUNK characters. Each chunk
        takes STREAM_CHUNK (or the remaining) uniforms from ``rng``."""
        remaining = length
        while remaining > 0:
            n = min(STREAM_CHUNK, remaining)
            out = np.empty(n, np.int64)
            self.next_input = self._run(np.zeros(0, np.int64), self.next_input,
                                        rng.random(n), temperature, top_k, top_p, out)
            remaining -= n
            yield self.vocab.decode(out)


def stop_at(pieces, stop: str):
    """Pass the text ``pieces`` through until their concatenation contains ``stop``: the
    piece in which its first occurrence ends is cut right after it and is the last one
    yielded. Lazy: each piece is yielded before the next is taken, so streaming keeps
    working, and a stop string split across pieces is still found. An empty ``stop``
    stops nothing."""
    if not stop:
        yield from pieces
        return
    keep = len(stop) - 1  # characters of the text so far that a match could start in
    tail = ""
    for piece in pieces:
        window = tail + piece
        i = window.find(stop)
        if i >= 0:
            # The text before this piece held no match, so this one ends inside it.
            yield piece[:i + len(stop) - len(tail)]
            return
        yield piece
        tail = window[-keep:] if keep else ""
