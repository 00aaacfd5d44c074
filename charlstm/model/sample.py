"""Generating text from a checkpoint, streamed in chunks from a compiled kernel."""
from __future__ import annotations

import time

import numpy as np

from charlstm.model.checkpoint import Checkpoint
from charlstm.parallel.handoff import SpinningWorker
from charlstm.model.cells import CELL_TABLE
from charlstm.kernels.panels import PANEL_WIDTH, pack_panels, panel_buffer
from charlstm.kernels.sampling import generate
from charlstm.kernels.sync import SLOT
from charlstm.model.shards import available_cores

STREAM_CHUNK = 32  # characters per kernel call: small enough to stream, large enough to be cheap
REPROBE_FIRST, REPROBE_MAX = 32, 1024  # one-core calls between tries of two cores (_probe_due)


class Sampler:
    """Holds a model's weights in the stacked layout the sampling kernel reads, and the
    batch-1 state it carries.

    Where the model splits into two unit blocks, characters are generated on one core or
    two (kernels/sampling.py), the same text either way: ``ranks`` fixes it, or the first
    use measures which is faster and later calls move to one core if two grow slow
    (``_run``)."""

    def __init__(self, ckpt: Checkpoint, ranks: int | None = None):
        """``ranks``: the cores that generate (1, or 2 where the model splits into two
        unit blocks); None measures which is faster here, at the first use."""
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

        # The products' columns regrouped by unit block (kernels/sampling.py): with two
        # blocks, each core computes every gate of half the units from its half of each
        # weight matrix, and updates those units' state itself.
        GH = G * H
        self.blocks = 2 if GH % (2 * PANEL_WIDTH) == 0 else 1  # then H is even too
        Hb = H // self.blocks
        order = np.concatenate([np.arange(g * H + b * Hb, g * H + (b + 1) * Hb)
                                for b in range(self.blocks) for g in range(G)])
        self.table0 = np.ascontiguousarray(
            (p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"] + bias_hh_input_side(0))[:, order])

        def pack(weight, into):
            """weight.T in panels (the right operand of x @ weight.T)."""
            pack_panels(np.ascontiguousarray(weight, np.float32), into, True)
            return into

        self.w_ih_p = panel_buffer(H, GH, np.float32, count=max(L - 1, 1))
        self.w_ih_p[...] = 0.0
        self.bias = np.zeros((max(L - 1, 1), GH), np.float32)
        for k in range(1, L):
            pack(p[f"rnn.weight_ih_l{k}"][order], self.w_ih_p[k - 1])
            self.bias[k - 1] = (p[f"rnn.bias_ih_l{k}"] + bias_hh_input_side(k))[order]
        self.w_hh_p = panel_buffer(H, GH, np.float32, count=L)
        for k in range(L):
            pack(p[f"rnn.weight_hh_l{k}"][order], self.w_hh_p[k])
        self.bias_hn = np.ascontiguousarray(self.bias_hn.reshape(L, self.blocks, Hb))
        self.peepholes = np.ascontiguousarray(
            self.peepholes.reshape(L, 3, self.blocks, Hb).transpose(0, 2, 1, 3))
        self.dec_p = pack(p["decoder.weight"], panel_buffer(H, len(self.vocab), np.float32))
        self.dec_b = p["decoder.bias"].copy()
        # The state, double-buffered (kernels/sampling.py): self.hs[self.parity] is current.
        self.hs = np.zeros((2, L, self.blocks, 1, Hb), np.float32)
        self.cs = np.zeros((2, L, self.blocks, 1, Hb), np.float32)
        self.parity = 0
        self.next_input = None
        if ranks not in (None, 1) and ranks != self.blocks:
            raise ValueError(f"ranks={ranks}: this model's {G} x {H} gate columns do not split "
                             f"into two blocks of whole {PANEL_WIDTH}-column panels; use 1")
        self.ranks = ranks  # None: measured at the first use
        self._forced = ranks is not None
        self._one_core_s: float | None = None  # seconds per character on one core, measured
        self._recent: list[bool] = []  # whether each of the last two-core calls was slower
        self._probe_every = REPROBE_FIRST  # one-core calls between tries of two, doubling
        self._since_probe = 0
        self._workers: list[SpinningWorker] = []  # ranks 1.. of a two-core call

    def _current(self, buffers: np.ndarray) -> np.ndarray:
        """The current half of double-buffered state [2, L, blocks, 1, H/blocks], as a
        [L, 1, H] view."""
        _, L, blocks, _, Hb = buffers.shape
        return buffers[self.parity].reshape(L, 1, blocks * Hb)

    @property
    def h(self) -> np.ndarray:
        """The current hidden state, [L, 1, H] (a view)."""
        return self._current(self.hs)

    @property
    def c(self) -> np.ndarray:
        """The current cell state, [L, 1, H] (a view; zeros for cells without one)."""
        return self._current(self.cs)

    def encode(self, text: str) -> np.ndarray:
        self.vocab.require_covers(text, "the prime text", "remove them or choose another prime")
        return self.vocab.encode(text).astype(np.int64)

    def reset(self) -> None:
        """Zero the state (and forget the next input), as before the first prime."""
        self.hs[...] = 0.0
        self.cs[...] = 0.0
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
        """Feed, then draw len(out) characters, on the cores chosen.

        The text does not depend on the number of cores, so the choice may change at any
        call: a two-core call that fails (the other core's thread could not start, or
        did not answer within sync.SPIN_LIMIT spins) is repeated on one core from the
        state saved before it, and without a forced ``ranks``, a two-core call slower per
        character than one core measured, in two of the last three calls (the machine
        grew busy: each barrier then waits for the other thread's turn on a core; one
        slow call alone is an interrupt or a page fault), moves the sample to one core,
        from which it tries two again now and then (_probe_due).
        """
        if self.ranks is None:
            self.ranks = self._measure_ranks()
        args = (self.parity, feed, first, uniforms, temperature, top_k, top_p, out)
        chars = len(feed) + len(out)
        last = None
        probing = self.ranks == 1 and self._probe_due()
        if self.ranks > 1 or probing:
            saved = self.hs.copy(), self.cs.copy()
            t0 = time.perf_counter()
            last = self._generate(2 if probing else self.ranks, self.hs, self.cs, *args)
            per_char = (time.perf_counter() - t0) / max(chars, 1)
            if last is None:
                self.hs[...], self.cs[...] = saved
                self.ranks = 1
            elif probing:
                if per_char < 0.9 * self._one_core_s:  # the machine is free again
                    self.ranks, self._recent, self._probe_every = 2, [], REPROBE_FIRST
                else:
                    self._probe_every = min(2 * self._probe_every, REPROBE_MAX)
            elif not self._forced and self._one_core_s:
                self._recent = (self._recent + [per_char > self._one_core_s])[-3:]
                if sum(self._recent) >= 2:
                    self.ranks = 1
        if last is None:
            last = self._generate(1, self.hs, self.cs, *args)
        self.parity = (self.parity + chars) % 2
        return last

    def _probe_due(self) -> bool:
        """Whether this one-core call should try two cores: every REPROBE_FIRST calls
        after a fall-back, then half as often after each try that lost, down to one in
        REPROBE_MAX, so that a sample that left two cores in a moment of load (two slow
        calls of three; on a 2-core KVM guest, within a few seconds of a 300,000-
        character sample at M) returns to them, while a machine that stays busy, or a
        model that one core runs faster, pays for at most one slower call in 1,024."""
        if self._forced or not self._one_core_s or self.blocks < 2:
            return False
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            return False
        self._since_probe = 0
        return True

    def _generate(self, ranks, hs, cs, parity, feed, first, uniforms, temperature, top_k,
                  top_p, out):
        """The sampling kernel on ``ranks`` cores: ranks 1.. in the worker threads, rank 0
        here. Returns the last character, or None if ranks > 1 failed: a worker could not
        be started (after a fork, or at interpreter shutdown) or a rank stopped
        answering; ``hs``/``cs`` are then partly advanced."""
        counts = np.zeros(ranks * SLOT, np.int64)
        args = (counts, self.cell, self.table0, self.w_ih_p, self.bias, self.w_hh_p,
                self.bias_hn, self.peepholes, self.dec_p, self.dec_b, hs, cs, parity, feed,
                first, uniforms, float(temperature), int(top_k), float(top_p), out)
        if ranks == 1:
            return generate(0, 1, *args)
        try:
            # Started at the first two-core call; in a forked child each starts a thread
            # of its own at its next submit.
            while len(self._workers) < ranks - 1:
                self._workers.append(SpinningWorker(f"charlstm-sample-{len(self._workers) + 1}"))
            others = self._workers[:ranks - 1]
            for r, worker in enumerate(others, start=1):
                worker.submit(generate, r, ranks, *args)
        except RuntimeError:  # the interpreter is shutting down: no new threads
            for worker in self._workers:
                if worker.pending:  # its rank gives up at the first barrier
                    worker.result()
            return None
        last = generate(0, ranks, *args)
        # A worker returns within SPIN_LIMIT spins of rank 0's return, whatever happened.
        results = [worker.result() for worker in others]
        return None if min([last] + results) < 0 else last

    def _measure_ranks(self, chars: int = 32, rounds: int = 3) -> int:
        """1 or 2: whichever generates faster here, by the median of ``rounds`` rounds,
        each timing one core and two on scratch state (the text is the same either
        way); one round settles it when two cores lose it. Two cores pay off when the
        weights outgrow one core's caches: on an AMD EPYC Zen 5 (1 MB of L2 per core),
        27,700 against 43,300 chars/s at M (3 MB of weights) and 8,300 against 15,000 at
        L, but 308,000 against 192,000 at S (256 KB), where the barriers cost more than
        the halved products save (benchmarks/sampling_cost.py). On a busy machine two
        cores lose: each barrier waits for the other thread's turn on a core."""
        if self.blocks < 2 or available_cores() < 2:
            return 1
        seconds = {1: [], 2: []}
        out = np.empty(chars, np.int64)
        none, draws = np.zeros(0, np.int64), np.zeros(chars)
        # Untimed, a first two-core call starts the worker thread, and outwaits whatever
        # still holds the other core: after training, OpenBLAS's threads spin for about
        # 0.1 s, and a first round timed then lost by 87 ms against 1 (AMD EPYC Zen 5).
        self._generate(2, np.zeros_like(self.hs), np.zeros_like(self.cs), 0, none, 0,
                       draws[:4], 0.0, 0, 1.0, out[:4])
        for _ in range(rounds):
            for ranks in (1, 2):
                hs, cs = np.zeros_like(self.hs), np.zeros_like(self.cs)
                t0 = time.perf_counter()
                done = self._generate(ranks, hs, cs, 0, none, 0, draws, 0.0, 0, 1.0, out)
                seconds[ranks].append(time.perf_counter() - t0 if done is not None else np.inf)
            self._one_core_s = float(np.median(seconds[1])) / chars
            if seconds[2][-1] >= 1.5 * seconds[1][-1]:  # clearly lost: a busy machine
                return 1
        return 2 if np.median(seconds[2]) < 0.9 * np.median(seconds[1]) else 1

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
