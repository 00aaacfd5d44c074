"""Choosing the BLAS and the step products' weight copy by measuring them here.

No library and no operand layout is fastest on every CPU. Measured on a 2-core AMD EPYC
(Zen 5, AVX-512; docs/BENCHMARKS.md): NumPy's OpenBLAS, with the AVX-512 kernels it picks
there, multiplies a shard's chunk products at about twice oneMKL's rate (MKL
takes its generic path on AMD CPUs), while one time step's [16, 128] x [128, 512] product
took 14-19 us with weight_hh transposed against 31-35 us as stored
(benchmarks/blas_choice.py). On Intel CPUs MKL is
expected to serve these shapes with its AVX-512 code. So ``train --blas auto`` times the
run's own shapes with each installed library, one BLAS thread per shard as training runs
them, and keeps the fastest for each role:

- the step products: the forward's ``h @ W_hh.T`` and the backward's ``dpre @ W_hh`` of
  one time step, [B/shards, H] rows, T times per layer and direction; for each library
  each copy of W_hh it can read is timed: as stored ([G*H, H]), transposed ([H, G*H],
  rows padded as Network pads them) and, for oneMKL, packed (the packing, once per
  chunk, shared out over the chunk's T steps); and charlstm's own product over weight_hh
  packed into panels (kernels/panels.py), which needs no library and is timed once for
  all of them: on the AMD EPYC Zen 5 it took 34-36 us at M where OpenBLAS's best copy
  took 59-75 us (benchmarks/blas_choice.py);
- the chunk products: decoder, input projections and weight gradients over all T*B/shards
  rows.

Candidates are timed interleaved, round after round, and compared by their medians; a
layout other than weights as stored must win by ``LAYOUT_MARGIN`` and a library other
than OpenBLAS by ``LIBRARY_MARGIN`` to be chosen, so noise does not flip a choice that
makes no difference.
"""
from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass, field

import numpy as np

from charlstm.machine import tuning_cache
from charlstm.training.config import (STEP_WEIGHT_COPIES, TrainConfig, parse_bf16_products, parse_step_weights)
from charlstm.errors import UserError
from charlstm.kernels import blas_libraries
from charlstm.kernels.blas import DEFAULT_BLAS, TRANSPOSED_PAD, format_blas, parse_blas
from charlstm.kernels.blas_libraries import NO_TRANS, ROW_MAJOR, TRANS
from charlstm.kernels.panels import pack_panels, panel_buffer, repeated_panel_product

# How much faster a non-default choice must measure to be taken. A library other than
# OpenBLAS needs more: products timed alone flatter it. At M on the AMD EPYC Zen 5, MKL's
# step products measured up to 5% faster alone, yet whole steps with them ran 7% slower
# (44.6 against 41.5 ms; two libraries' buffers share the caches in a step).
LAYOUT_MARGIN = 0.05
LIBRARY_MARGIN = 0.15
STEP_BUDGET_S = 4e-3  # about how long one sample of a step product runs
MAX_CHUNK_ROWS = 2048  # chunk products are timed on at most this many rows
_F = ctypes.c_float


@dataclass
class Choice:
    """What ``tune`` chose, and the medians (seconds per step of one shard) behind it;
    ``remembered``: taken from the tuning cache (tuning_cache.py), measured earlier on
    this machine for the same shapes, rather than measured now. ``bf16_products``: what
    computes a bfloat16 run's products (config.bf16_products)."""

    blas: str
    step_weights: str
    timings: dict = field(default_factory=dict)
    remembered: bool = False
    bf16_products: str = "panels/panels"

    def describe(self) -> str:
        return f"--blas {self.blas} --step-weights {self.step_weights}"


class _Product:
    """One float32 product c = op(a) @ op(b) at fixed operands, callable through a library."""

    def __init__(self, m, n, k, trans_a, trans_b, rng, pad=0):
        """``pad``: columns of padding after each row of b (a transposed weight copy)."""
        self.m, self.n, self.k, self.ta, self.tb = m, n, k, trans_a, trans_b
        self.a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        rows, cols = (n, k) if trans_b else (k, n)
        self.b = rng.standard_normal((rows, cols + pad)).astype(np.float32)
        self.ldb = cols + pad
        self.c = np.empty((m, n), np.float32)

    def seconds(self, gemm, reps: int) -> float:
        m, n, k = self.m, self.n, self.k
        args = (ROW_MAJOR, TRANS if self.ta else NO_TRANS, TRANS if self.tb else NO_TRANS,
                m, n, k, _F(1.0), self.a.ctypes.data, m if self.ta else k,
                self.b.ctypes.data, self.ldb, _F(0.0), self.c.ctypes.data, n)
        t0 = time.perf_counter()
        for _ in range(reps):
            gemm(*args)
        return (time.perf_counter() - t0) / reps

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k


def _shard_rows(config: TrainConfig) -> tuple[int, int]:
    """Rows of a shard's step products, and BLAS threads per shard, as ShardedNetwork runs."""
    shards = max(1, min(config.threads, config.batch_size))
    return math.ceil(config.batch_size / shards), max(1, config.threads // shards)


class _PackedProduct:
    """One time step's product with weight_hh packed by the library (oneMKL's
    cblas_sgemm_pack/compute): the compute per step plus the packing, once per chunk,
    shared out over the chunk's T steps."""

    def __init__(self, lib, rows, H, GH, forward, T, rng):
        self.lib, self.rows, self.forward, self.T = lib, rows, forward, T
        self.n, self.k = (GH, H) if forward else (H, GH)
        self.w = rng.standard_normal((GH, H)).astype(np.float32)
        self.a = rng.standard_normal((rows, self.k)).astype(np.float32)
        self.c = np.empty((rows, self.n), np.float32)
        lib_size = lib.pack_size("s", rows, self.n, self.k)
        self.buf = np.empty(lib_size // 4 + 16, np.float32)
        self.pack_fn = blas_libraries.PACK_PROTOTYPES["s"](lib.packed["sgemm_pack"])
        self.compute = blas_libraries.COMPUTE_PROTOTYPES["s"](lib.packed["sgemm_compute"])

    def _pack(self):
        self.pack_fn(ROW_MAJOR, blas_libraries.PACK_B, TRANS if self.forward else NO_TRANS,
                     self.rows, self.n, self.k, _F(1.0), self.w.ctypes.data, self.w.shape[1],
                     self.buf.ctypes.data)

    def seconds(self, reps: int) -> float:
        t0 = time.perf_counter()
        self._pack()
        pack_s = time.perf_counter() - t0
        args = (ROW_MAJOR, NO_TRANS, blas_libraries.PACKED, self.rows, self.n, self.k,
                self.a.ctypes.data, self.k, self.buf.ctypes.data, self.n, _F(0.0),
                self.c.ctypes.data, self.n)
        t0 = time.perf_counter()
        for _ in range(reps):
            self.compute(*args)
        return (time.perf_counter() - t0) / reps + pack_s / self.T

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.n * self.k


class _PanelProduct:
    """One time step's product through charlstm's own kernel (kernels/panels.py), with
    weight_hh packed into panels once per chunk: the product per step plus the packing
    shared out over the chunk's T steps. No BLAS is involved, so one timing serves every
    library."""

    def __init__(self, rows, H, GH, forward, T, rng):
        self.forward, self.T = forward, T
        n, k = (GH, H) if forward else (H, GH)
        self.w = rng.standard_normal((GH, H)).astype(np.float32)
        self.a = rng.standard_normal((rows, k)).astype(np.float32)
        self.c = np.empty((rows, n), np.float32)
        self.panels = panel_buffer(k, n, np.float32)
        self.flops = 2.0 * rows * n * k

    def seconds(self, reps: int) -> float:
        t0 = time.perf_counter()
        pack_panels(self.w, self.panels, self.forward)
        pack_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        repeated_panel_product(self.a, self.panels, self.c, reps)
        return (time.perf_counter() - t0) / reps + pack_s / self.T


def _panel_products(config: TrainConfig, rng) -> dict:
    rows, _ = _shard_rows(config)
    H, GH, T = config.hidden_size, config.gates * config.hidden_size, config.seq_len
    return {direction: _PanelProduct(rows, H, GH, direction == "forward", T, rng)
            for direction in ("forward", "backward")}


def _step_products(config: TrainConfig, rng) -> dict[str, _Product]:
    """One time step's recurrent products, for each copy of weight_hh a plain gemm reads."""
    rows, _ = _shard_rows(config)
    H, GH = config.hidden_size, config.gates * config.hidden_size
    return {
        ("forward", "stored"): _Product(rows, GH, H, False, True, rng),      # h @ W.T
        ("forward", "transposed"): _Product(rows, GH, H, False, False, rng,   # h @ (W.T)
                                            TRANSPOSED_PAD),
        ("backward", "stored"): _Product(rows, H, GH, False, False, rng),     # dpre @ W
        ("backward", "transposed"): _Product(rows, H, GH, False, True, rng,   # dpre @ (W.T).T
                                             TRANSPOSED_PAD),
    }


def _packed_products(config: TrainConfig, lib, rng) -> dict:
    rows, _ = _shard_rows(config)
    H, GH, T = config.hidden_size, config.gates * config.hidden_size, config.seq_len
    return {(direction, "packed"): _PackedProduct(lib, rows, H, GH, direction == "forward", T, rng)
            for direction in ("forward", "backward")}


def _chunk_products(config: TrainConfig, vocab_size: int, rng) -> list[tuple[_Product, int]]:
    """The chunk products of one shard's step with how often each runs (rows capped)."""
    rows, _ = _shard_rows(config)
    N = min(config.seq_len * rows, MAX_CHUNK_ROWS)
    H, GH, L, V = config.hidden_size, config.gates * config.hidden_size, config.num_layers, vocab_size
    out = [(_Product(N, V, H, False, True, rng), 1),    # decoder forward
           (_Product(V, H, N, True, False, rng), 1),    # decoder weight gradient
           (_Product(N, H, V, False, False, rng), 1),   # decoder input gradient
           (_Product(GH, H, N, True, False, rng), L)]   # weight_hh gradients
    if L > 1:
        out += [(_Product(N, GH, H, False, True, rng), L - 1),   # upper input projections
                (_Product(GH, H, N, True, False, rng), L - 1),   # their weight gradients
                (_Product(N, H, GH, False, False, rng), L - 1)]  # their input gradients
    return out


def _reps(seconds_per_rep: float, budget_s: float = STEP_BUDGET_S) -> int:
    """Repetitions that make one sample last about ``budget_s``, from a calibration run's
    seconds per repetition. Counted from the measured time, not from the FLOPs: a tiny
    product is bound by the call, not the arithmetic (at hidden size 12 a FLOP-based
    count made each sample 15x too long and the tuner 7 s instead of 0.5)."""
    return max(1, int(budget_s / max(seconds_per_rep, 1e-9)))


def tune(config: TrainConfig, vocab_size: int, step_libraries=None, chunk_libraries=None,
         rounds: int = 5) -> Choice:
    """Measure and choose the BLAS of each role and the step products' copy of weight_hh
    for this run's shapes on this machine (see the module's docstring).

    ``step_libraries``/``chunk_libraries``: the candidates for each role (default: every
    fast library installed, ``blas_libraries.available()``). Takes about 0.3 s at hidden size 64, 1-2 s at 256-512.
    Raises blas_libraries.LibraryUnavailable if a named candidate is not installed.
    """
    installed = blas_libraries.available() or [DEFAULT_BLAS]
    step_libraries = list(step_libraries or installed)
    chunk_libraries = list(chunk_libraries or installed)
    libs = {name: blas_libraries.load(name) for name in {*step_libraries, *chunk_libraries}}
    rng = np.random.default_rng(0)
    steps = _step_products(config, rng)
    packed = {name: _packed_products(config, libs[name], rng)
              for name in step_libraries if libs[name].packs}
    panels = _panel_products(config, rng)
    chunks = _chunk_products(config, vocab_size, rng)
    _, blas_threads = _shard_rows(config)
    saved = {name: lib.get_threads() for name, lib in libs.items() if lib.get_threads}
    for name, lib in libs.items():
        if lib.set_threads:
            lib.set_threads(blas_threads)
    samples: dict[tuple, list[float]] = {}
    try:
        gemms = {name: lib.gemm("s") for name, lib in libs.items()}
        # Warm up each candidate at each shape (the panels compile or load their kernel),
        # then calibrate how many repetitions make a sample last STEP_BUDGET_S.
        reps = {}
        for direction, product in panels.items():
            product.seconds(3)
            reps["panels", direction] = _reps(product.seconds(10))
        for name in step_libraries:
            for key, product in steps.items():
                product.seconds(gemms[name], 3)
                reps["step", name, *key] = _reps(product.seconds(gemms[name], 10))
            for key, product in packed.get(name, {}).items():
                product.seconds(3)
                reps["packed", name, *key] = _reps(product.seconds(10))
        for _ in range(rounds):
            for direction, product in panels.items():
                samples.setdefault(("panels", direction), []).append(
                    product.seconds(reps["panels", direction]))
            for name in step_libraries:
                for key, product in steps.items():
                    samples.setdefault(("step", name, *key), []).append(
                        product.seconds(gemms[name], reps["step", name, *key]))
                for key, product in packed.get(name, {}).items():
                    samples.setdefault(("step", name, *key), []).append(
                        product.seconds(reps["packed", name, *key]))
            if len(chunk_libraries) > 1:
                for name in chunk_libraries:
                    total = sum(count * product.seconds(gemms[name], 1) for product, count in chunks)
                    samples.setdefault(("chunk", name), []).append(total)
    finally:
        for name, n in saved.items():
            libs[name].set_threads(n)
    median = {key: float(np.median(values)) for key, values in samples.items()}

    def better(candidates: dict, default, margin):
        """The fastest key, unless the default is within ``margin`` of it."""
        best = min(candidates, key=candidates.get)
        if default in candidates and candidates[default] <= candidates[best] * (1 + margin):
            return default
        return best

    T, L = config.seq_len, config.num_layers
    per_library, layouts = {}, {}
    for name in step_libraries:
        layout = []
        for direction in ("forward", "backward"):
            median[("step", name, direction, "panels")] = median[("panels", direction)]
            pick = better({copy: median[("step", name, direction, copy)]
                           for copy in STEP_WEIGHT_COPIES
                           if ("step", name, direction, copy) in median}, "stored",
                          LAYOUT_MARGIN)
            layout.append(pick)
        layouts[name] = layout
        per_library[name] = T * L * sum(median[("step", name, d, c)]
                                        for d, c in zip(("forward", "backward"), layout))
    step = better(per_library, DEFAULT_BLAS, LIBRARY_MARGIN)
    if len(chunk_libraries) > 1:
        chunk = better({name: median[("chunk", name)] for name in chunk_libraries},
                       DEFAULT_BLAS, LIBRARY_MARGIN)
    else:
        chunk = chunk_libraries[0]
    timings = {"step_s": per_library,
               "chunk_s": {name: median[("chunk", name)] for name in chunk_libraries
                           if ("chunk", name) in median},
               "step_product_s": {"/".join(k[1:]): v for k, v in median.items() if k[0] == "step"
                                  and k[-1] != "panels"}
               | {f"panels/{d}": median[("panels", d)] for d in ("forward", "backward")}}
    choice = Choice(format_blas(step, chunk), "/".join(layouts[step]), timings)
    if config.precision == "bfloat16":
        choice.bf16_products, bf16_timings = tune_bf16(config, vocab_size, rounds)
        choice.timings.update(bf16_timings)
    return choice


def _bf16_candidates() -> list[str]:
    """What can compute bfloat16 products here: charlstm's panels (every CPU with
    AVX512_BF16), and oneMKL's bfloat16 GEMM where it is installed."""
    kinds = ["panels"]
    try:
        if blas_libraries.load("mkl").has_bf16:
            kinds.append("mkl")
    except blas_libraries.LibraryUnavailable:
        pass
    return kinds


def tune_bf16(config: TrainConfig, vocab_size: int, rounds: int = 5) -> tuple[str, dict]:
    """Measure charlstm's bfloat16 panels against oneMKL's bfloat16 GEMM, where it is
    installed, and choose for each role of a bfloat16 run (config.bf16_products): the
    step products (one time step forward and backward, T per layer) with the weights'
    rounding and packing, once per step; and the chunk products (every other product of
    a shard's step, on at most MAX_CHUNK_ROWS rows, scaled to the chunk). oneMKL is taken
    only when it is LIBRARY_MARGIN faster, since the panels round the same on every CPU.
    Returns (STEP/CHUNK, the medians behind it, seconds per step of one shard)."""
    from charlstm.training.config import GATES
    from charlstm.kernels.bf16_timing import repeated_step_product
    from charlstm.kernels.blas import BLAS_THREADS
    from charlstm.model.mixed import LowPrecisionProducts, LowPrecisionWeights

    kinds = _bf16_candidates()
    if kinds == ["panels"]:
        return "panels/panels", {}
    rows, _ = _shard_rows(config)
    H, L, T, V = config.hidden_size, config.num_layers, config.seq_len, vocab_size
    GH = GATES[config.cell] * H
    rng = np.random.default_rng(0)

    def array(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)

    # A two-layer model of the run's sizes, so that every kind of product is there.
    params = {"rnn.weight_hh_l0": array(GH, H), "rnn.weight_hh_l1": array(GH, H),
              "rnn.weight_ih_l1": array(GH, H), "decoder.weight": array(V, H)}
    chunk_T = max(1, min(T, MAX_CHUNK_ROWS // rows))
    N = chunk_T * rows
    h, d, x = array(rows, H), array(rows, GH), array(N, H)
    dpre, dlogits = array(N, GH), array(N, V)
    gates, dh = np.empty((rows, GH), np.float32), np.empty((rows, H), np.float32)
    proj, logits, dx = np.empty_like(dpre), np.empty_like(dlogits), np.empty_like(x)
    grad, grad_dec = np.empty((GH, H), np.float32), np.empty((V, H), np.float32)
    setups = {}
    for kind in kinds:
        weights = LowPrecisionWeights(params, 2, f"{kind}/{kind}")
        setups[kind] = (weights, LowPrecisionProducts(weights, chunk_T, rows))

    def step_seconds(kind):
        """A shard's step products of one step: refresh (per step) + T*L of each."""
        weights, products = setups[kind]
        t0 = time.perf_counter()
        weights.refresh()
        refresh = time.perf_counter() - t0
        reps = max(4, T)
        t0 = time.perf_counter()
        repeated_step_product(h, products.step_weight(0, True), gates, reps)
        repeated_step_product(d, products.step_weight(0, False), dh, reps)
        return refresh + (time.perf_counter() - t0) / reps * T * L

    def chunk_seconds(kind):
        """A shard's chunk products of one step (scaled from N rows to the chunk's)."""
        _, products = setups[kind]
        t0 = time.perf_counter()
        products.decoder(x, logits)
        products.decoder_backward(dlogits, x, grad_dec, dx)
        products.recurrent_weight_gradient(dpre, x[:rows], x[rows:], grad)
        t1 = time.perf_counter()
        products.input_projection(1, x, proj)
        products.input_weight_gradient(dpre, x, grad)
        products.input_gradient(1, dpre, dx)
        t2 = time.perf_counter()
        return ((t1 - t0) + (L - 1) * (t2 - t1)) * T / chunk_T

    before = BLAS_THREADS.get()
    BLAS_THREADS.set(1)
    samples: dict = {}
    try:
        for kind in kinds:  # compiles, or loads from the cache
            step_seconds(kind)
            chunk_seconds(kind)
        for _ in range(rounds):
            for kind in kinds:
                samples.setdefault(("step", kind), []).append(step_seconds(kind))
                samples.setdefault(("chunk", kind), []).append(chunk_seconds(kind))
    finally:
        if before is not None:
            BLAS_THREADS.set(before)
    median = {key: float(np.median(values)) for key, values in samples.items()}

    def pick(role):
        faster = median[(role, "mkl")] * (1 + LIBRARY_MARGIN) < median[(role, "panels")]
        return "mkl" if faster else "panels"

    timings = {f"bf16_{role}_s": {kind: median[(role, kind)] for kind in kinds}
               for role in ("step", "chunk")}
    return f"{pick('step')}/{pick('chunk')}", timings


def tuned_shape(config: TrainConfig, vocab_size: int) -> dict:
    """What a measurement depends on besides the machine: the products' shapes, as a
    shard computes them, and the precision."""
    rows, blas_threads = _shard_rows(config)
    return {"cell": config.cell, "hidden_size": config.hidden_size,
            "num_layers": config.num_layers, "vocab": vocab_size, "seq_len": config.seq_len,
            "shard_rows": rows, "blas_threads": blas_threads, "precision": config.precision}


def resolve(config: TrainConfig, vocab_size: int, blas: str = "auto",
            step_weights: str | None = None, retune: bool = False,
            bf16_products: str | None = None) -> tuple[TrainConfig, Choice | None]:
    """``config`` with its BLAS and step weights fixed for a new run, and the measurement
    behind them (None when nothing was measured).

    ``blas``: "auto" (measure every installed library, ``tune``, or take what an earlier
    measurement of the same shapes on this machine chose: tuning_cache.py), or LIBRARY or
    STEP/CHUNK. ``retune``: measure even when a choice is remembered, and remember the
    new one. ``step_weights``: FORWARD/BACKWARD, or None: measured with "auto",
    "stored/stored" (PyTorch's layout) otherwise, so an explicit choice is reproducible.
    ``bf16_products``: what computes a bfloat16 run's products (STEP/CHUNK of panels and
    mkl), or None: measured with "auto", "panels/panels" otherwise.
    Raises UserError for a malformed or uninstalled choice."""
    try:
        if step_weights is not None:
            parse_step_weights(step_weights)
        if bf16_products is not None:
            if config.precision != "bfloat16":
                raise UserError(f"--bf16-products chooses a bfloat16 run's products, and this "
                                f"run is {config.precision}: drop it, or add --precision bfloat16")
            bf16_products = "/".join(parse_bf16_products(bf16_products))
            config = config.replace(bf16_products=bf16_products)
            _check_bf16_products(config)
        if blas != "auto":
            step, chunk = parse_blas(blas)
            for name in {step, chunk}:
                blas_libraries.load(name)
            chosen = config.replace(blas=format_blas(step, chunk),
                                    step_weights=step_weights or "stored/stored")
            _check_packing(chosen)
            return chosen, None
    except ValueError as e:
        raise UserError(str(e)) from None
    choice = None if retune else _remembered(config, vocab_size)
    if choice is None:
        choice = tune(config, vocab_size)
        tuning_cache.store(tuning_cache.key_for(tuned_shape(config, vocab_size)),
                           {"blas": choice.blas, "step_weights": choice.step_weights,
                            "bf16_products": choice.bf16_products, "timings": choice.timings,
                            "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    fixed = _process_binding()
    if fixed is not None and choice.blas != fixed:
        # An earlier run in this process linked the kernels to another choice (one per
        # process: blas.py), as in a notebook's second charlstm.train: measure what that
        # choice can run, and remember nothing.
        step, chunk = parse_blas(fixed)
        choice = tune(config, vocab_size, [step], [chunk])
    if step_weights is not None:
        choice.step_weights = step_weights
    if bf16_products is not None:
        choice.bf16_products = bf16_products
    chosen = config.replace(blas=choice.blas, step_weights=choice.step_weights,
                            bf16_products=choice.bf16_products)
    _check_packing(chosen)
    return chosen, choice


def _process_binding() -> str | None:
    """The BLAS choice this process's kernels are already linked against, if any."""
    from charlstm.kernels.blas import BLAS

    return BLAS.fixed_spec()


def _remembered(config: TrainConfig, vocab_size: int) -> Choice | None:
    """The choice an earlier measurement of these shapes on this machine made, if it is
    still one this install can run."""
    entry = tuning_cache.lookup(tuning_cache.key_for(tuned_shape(config, vocab_size)))
    if entry is None:
        return None
    try:
        for name in set(parse_blas(entry["blas"])):
            blas_libraries.load(name)
        parse_step_weights(entry["step_weights"])
        bf16 = entry.get("bf16_products", "panels/panels")
        _check_bf16_products(config.replace(bf16_products=bf16))
    except (ValueError, UserError):
        return None
    return Choice(entry["blas"], entry["step_weights"], entry.get("timings", {}), remembered=True,
                  bf16_products=bf16)


def _check_bf16_products(config: TrainConfig) -> None:
    """Raise UserError when ``config``'s bfloat16 products need oneMKL's bfloat16 GEMM
    and it is not here."""
    if "mkl" in parse_bf16_products(config.bf16_products) and "mkl" not in _bf16_candidates():
        raise UserError(f"--bf16-products {config.bf16_products} needs oneMKL with its bfloat16 "
                        f"GEMM: pip install 'charlstm[mkl]', or use --bf16-products panels")


def _check_packing(config: TrainConfig) -> None:
    step = parse_blas(config.blas)[0]
    if "packed" in parse_step_weights(config.step_weights) and not blas_libraries.load(step).packs:
        raise UserError(f"--step-weights {config.step_weights} packs weight_hh, which {step} "
                        f"cannot; use --blas mkl (or mkl/CHUNK), or stored/transposed copies")


def fall_back_if_missing(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``config`` on a BLAS that loads here: a run saved on a library this machine lacks
    continues on OpenBLAS (and its bfloat16 products on charlstm's panels), with a
    one-line warning saying what that costs."""
    warnings = []
    if config.precision == "bfloat16":
        try:
            _check_bf16_products(config)
        except UserError:
            warnings.append(
                f"this run's bfloat16 products ran on {config.bf16_products}, and oneMKL's "
                f"bfloat16 GEMM is not here: continuing on charlstm's panels, which round "
                f"differently from here on (pip install 'charlstm[mkl]' to continue bit for bit)")
            config = config.replace(bf16_products="panels/panels")
    missing = []
    for name in sorted(set(parse_blas(config.blas))):
        try:
            blas_libraries.load(name)
        except blas_libraries.LibraryUnavailable:
            missing.append(name)
    if not missing:
        return config, "; ".join(warnings) or None
    extras = " ".join(f"'charlstm[{blas_libraries.EXTRA_FOR[m]}]'" for m in missing
                      if m in blas_libraries.EXTRA_FOR)
    fix = f" (pip install {extras} to continue bit for bit)" if extras else ""
    weights = "/".join("stored" if w == "packed" else w
                       for w in parse_step_weights(config.step_weights))
    warnings.append(
        f"this run's products ran on {config.blas}, and {', '.join(missing)} is not installed "
        f"here: continuing on {DEFAULT_BLAS}, which rounds float32 differently from here on{fix}")
    return config.replace(blas=DEFAULT_BLAS, step_weights=weights), "; ".join(warnings)
