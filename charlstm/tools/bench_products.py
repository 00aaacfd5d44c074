"""How close charlstm's matrix products come to what this CPU can do, for `charlstm bench`.

The peaks are measured here, not looked up: a core's float32 peak is what charlstm's
register-blocked float32 product (kernels/panels.py) reaches on operands that stay in the
L1 cache, and its bfloat16 peak what the VDPBF16PS block (kernels/bf16.py) reaches there;
both on every core at once, one thread each (the kernels release the GIL). NumPy's own
float32 GEMM on large square matrices is reported beside them, as the figure a BLAS
reaches on the shapes it is built for.

Each of a training step's products is then timed alone, at the shapes one shard of the
batch computes, in the step's precision, and reported as GFLOP/s against the peak of one
core.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from charlstm.training.config import GATES


def _best_seconds(fn, reps: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _on_cores(make_job, cores: int, seconds: float = 0.3) -> float:
    """Total GFLOP/s of ``cores`` threads each running ``make_job()``'s (run(reps),
    flops per rep) for about ``seconds``."""
    jobs = [make_job() for _ in range(cores)]
    run, flops = jobs[0]
    reps = max(1, int(seconds / max(_best_seconds(run, 1, 3), 1e-6)))
    for job, _ in jobs:
        job(1)
    rates = [0.0] * cores

    def work(i):
        job, job_flops = jobs[i]
        t0 = time.perf_counter()
        job(reps)
        rates[i] = job_flops * reps / (time.perf_counter() - t0) / 1e9

    threads = [threading.Thread(target=work, args=(i,)) for i in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return float(sum(rates))


def float32_peak_gflops(cores: int) -> float:
    """charlstm's float32 register block on L1-resident operands, ``cores`` threads."""
    from charlstm.kernels.panels import pack_panels, panel_buffer, repeated_panel_product

    def job():
        rng = np.random.default_rng(0)
        m, k, n = 8, 256, 64
        a = rng.standard_normal((m, k)).astype(np.float32)
        panels = panel_buffer(k, n, np.float32)
        pack_panels(rng.standard_normal((k, n)).astype(np.float32), panels, False)
        out = np.empty((m, n), np.float32)
        return (lambda reps: repeated_panel_product(a, panels, out, reps)), 2.0 * m * k * n

    return _on_cores(job, cores)


def bfloat16_peak_gflops(cores: int) -> float:
    """charlstm's VDPBF16PS register block on L1-resident operands, ``cores`` threads;
    0 where the CPU has no AVX512_BF16."""
    from charlstm.machine.cpu import has_bf16_products

    if not has_bf16_products():
        return 0.0
    from charlstm.kernels.bf16 import (pack_panels, pair_buffer, panel_buffer, result_scratch, round_rows)
    from charlstm.kernels.bf16 import repeated_bf16_product

    def job():
        rng = np.random.default_rng(0)
        m, k, n = 8, 512, 64
        pairs = pair_buffer(m, k)
        round_rows(rng.standard_normal((m, k)).astype(np.float32), pairs)
        panels = panel_buffer(k, n)
        pack_panels(rng.standard_normal((k, n)).astype(np.float32), panels, False)
        out, scratch = np.empty((m, n), np.float32), result_scratch()
        return ((lambda reps: repeated_bf16_product(pairs, panels, out, scratch, reps)),
                2.0 * m * k * n)

    return _on_cores(job, cores)


def step_products(cell: str, H: int, L: int, V: int, T: int, B: int) -> list[dict]:
    """Every product of one shard's training step: name, (m, k, n) and how often it runs."""
    G = GATES[cell]
    N = T * B
    rows = [
        {"product": "step forward h @ W_hh.T", "m": B, "k": H, "n": G * H, "count": T * L},
        {"product": "step backward dpre @ W_hh", "m": B, "k": G * H, "n": H, "count": T * L},
        {"product": "decoder forward", "m": N, "k": H, "n": V, "count": 1},
        {"product": "decoder weight gradient", "m": H, "k": N, "n": V, "count": 1},
        {"product": "decoder input gradient", "m": N, "k": V, "n": H, "count": 1},
        {"product": "weight_hh gradient", "m": H, "k": N, "n": G * H, "count": L},
    ]
    if L > 1:
        rows += [
            {"product": "upper input projection", "m": N, "k": H, "n": G * H, "count": L - 1},
            {"product": "weight_ih gradient", "m": H, "k": N, "n": G * H, "count": L - 1},
            {"product": "upper input gradient", "m": N, "k": G * H, "n": H, "count": L - 1},
        ]
    return rows


def _bf16_timer(m, k, n, rng):
    from charlstm.kernels.bf16 import (pack_panels, pair_buffer, panel_buffer, result_scratch, round_rows)
    from charlstm.kernels.bf16 import repeated_bf16_product

    pairs = pair_buffer(m, k)
    round_rows(rng.standard_normal((m, k)).astype(np.float32), pairs)
    panels = panel_buffer(k, n)
    pack_panels(rng.standard_normal((k, n)).astype(np.float32), panels, False)
    out, scratch = np.empty((m, n), np.float32), result_scratch()
    return lambda reps: repeated_bf16_product(pairs, panels, out, scratch, reps)


def _float32_timer(m, k, n, rng, step: bool, config):
    """The float32 product as the run's choice computes it: charlstm's panels for a step
    product when the run's step weights say so, else the chunk library's gemm."""
    import ctypes

    from charlstm.kernels import blas_libraries
    from charlstm.kernels.blas import parse_blas
    from charlstm.kernels.panels import pack_panels, panel_buffer, repeated_panel_product

    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    if step and "panels" in config.step_weights:
        panels = panel_buffer(k, n, np.float32)
        pack_panels(b, panels, False)
        return lambda reps: repeated_panel_product(a, panels, out, reps)
    library = blas_libraries.load(parse_blas(config.blas)[0 if step else 1])
    gemm = library.gemm("s")
    args = (blas_libraries.ROW_MAJOR, blas_libraries.NO_TRANS, blas_libraries.NO_TRANS, m, n, k,
            ctypes.c_float(1.0), a.ctypes.data, k, b.ctypes.data, n, ctypes.c_float(0.0),
            out.ctypes.data, n)

    def run(reps, operands=(a, b, out)):  # the arrays must outlive their addresses in args
        for _ in range(reps):
            gemm(*args)
    return run


def product_rates(config, vocab_size: int, shard_rows: int) -> list[dict]:
    """Each product of one shard's step (``step_products``) timed alone on this core in
    ``config.precision``: seconds per call, GFLOP/s, and seconds per step (times its
    count)."""
    from charlstm.kernels.blas import BLAS_THREADS

    rng = np.random.default_rng(0)
    before = BLAS_THREADS.get()
    BLAS_THREADS.set(1)  # one core, as a shard runs
    try:
        rows = step_products(config.cell, config.hidden_size, config.num_layers, vocab_size,
                             config.seq_len, shard_rows)
        for row in rows:
            m, k, n = row["m"], row["k"], row["n"]
            step = row["product"].startswith("step")
            run = (_bf16_timer(m, k, n, rng) if config.precision == "bfloat16"
                   else _float32_timer(m, k, n, rng, step, config))
            flops = 2.0 * m * k * n
            run(1)
            seconds = _best_seconds(run, max(1, int(2e8 / flops)))
            row.update(seconds=seconds, gflops=flops / seconds / 1e9,
                       step_ms=seconds * row["count"] * 1e3)
    finally:
        if before is not None:
            BLAS_THREADS.set(before)
    return rows
