"""Where the time of one training step goes, for a benchmark configuration.

    python benchmarks/profile_step.py --config M --corpus ../shared/data/tinyshakespeare.txt
    python benchmarks/profile_step.py --config M --shard-of 2 --corpus ...

Times every compiled call the step makes (median over steps), splits the recurrent
kernels into their per-step GEMMs (timed alone at the same shapes) and the fused
elementwise work, and reports the rest of the step as Python overhead.

Training splits a step over the cores (shards.py), which two timers in two threads
cannot take apart; ``--shard-of N`` instead profiles what one of N shards computes: the
configuration with B/N streams, in one thread, with one BLAS thread.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.model import network  # noqa: E402
from charlstm.tools.bench import CONFIGS, GATES  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.kernels import blas  # noqa: E402
from charlstm.kernels.jit import kernel  # noqa: E402
from charlstm.kernels.panels import pack_panels, panel_buffer  # noqa: E402
from charlstm.training.loop import Trainer, prepare_data  # noqa: E402
from charlstm.machine.tune import resolve  # noqa: E402

CALLS = {
    "recurrence forward": ("lstm_forward", "rnn_forward", "gru_forward"),
    "recurrence backward": ("lstm_backward", "rnn_backward", "gru_backward"),
    "chunk GEMMs (projections, decoder, weight gradients)": ("matmul_nn", "matmul_nt", "matmul_tn"),
    "softmax cross-entropy": ("softmax_xent_grad",),
    "one-hot gather/scatter": ("onehot_forward", "onehot_backward"),
}


@kernel
def _repeat_forward(h, w, out, n, layout):
    for _ in range(n):
        blas.recurrent_forward(h, w, out, layout)


@kernel
def _repeat_backward(d, w, out, n, layout):
    for _ in range(n):
        blas.recurrent_backward(d, w, out, layout)


def per_step_gemm_seconds(B, H, G, T, layouts=("stored", "stored")):
    """Seconds the recurrent GEMMs of one layer's forward and backward take alone, with
    the copies of weight_hh that config.step_weights names (packing included, once per
    chunk and direction)."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((B, H)).astype(np.float32)
    w = rng.standard_normal((G * H, H)).astype(np.float32)
    wt = np.zeros((H, G * H + blas.TRANSPOSED_PAD), np.float32)
    wt[:, :G * H] = w.T  # padded as Network pads its transposed copy
    g = np.empty((B, G * H), np.float32)
    d = rng.standard_normal((B, G * H)).astype(np.float32)
    out = np.empty((B, H), np.float32)

    def copy(layout, forward, rows):
        if layout == "packed":
            buf = blas.BLAS.packed_buffer(w.shape, np.float32, forward, rows)
            return buf, lambda: blas.BLAS.pack_step_weight(w, buf, forward, rows)
        if layout == "panels":
            buf = panel_buffer(H, G * H, np.float32) if forward else panel_buffer(G * H, H, np.float32)
            return buf, lambda: pack_panels(w, buf, forward)
        return (wt if layout == "transposed" else w), (lambda: None)

    (w_fwd, pack_fwd), (w_bwd, pack_bwd) = copy(layouts[0], True, B), copy(layouts[1], False, B)
    code_fwd, code_bwd = blas.STEP_LAYOUTS[layouts[0]], blas.STEP_LAYOUTS[layouts[1]]
    pack_fwd()
    pack_bwd()
    _repeat_forward(h, w_fwd, g, 2, code_fwd)
    _repeat_backward(d, w_bwd, out, 2, code_bwd)
    fwd, bwd = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        pack_fwd()
        _repeat_forward(h, w_fwd, g, T, code_fwd)
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pack_bwd()
        _repeat_backward(d, w_bwd, out, T, code_bwd)
        bwd.append(time.perf_counter() - t0)
    return float(np.median(fwd)), float(np.median(bwd))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="M", choices=sorted(CONFIGS))
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--shard-of", type=int, default=1,
                    help="profile one of this many shards (default: the whole step, one thread)")
    ap.add_argument("--blas", default="auto", help="as train --blas")
    ap.add_argument("--step-weights", default=None, help="as train --step-weights")
    a = ap.parse_args()
    spec = dict(CONFIGS[a.config])
    if a.shard_of > 1:
        spec["batch_size"] //= a.shard_of
        blas.BLAS_THREADS.set(1)
    config = TrainConfig(corpus=(a.corpus,) if a.corpus else (), threads=1, **spec)
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), a.blas, a.step_weights)
    trainer = Trainer(config, data)
    spent = {}

    def timed(name, fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            result = fn(*args, **kw)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            return result
        return wrapper

    for names in CALLS.values():
        for name in names:
            if hasattr(network, name):
                setattr(network, name, timed(name, getattr(network, name)))
    for _ in range(3):
        trainer.train_step()
    rows, steps = [], []
    for _ in range(a.steps):
        spent.clear()
        t0 = time.perf_counter()
        trainer.train_step()
        steps.append(time.perf_counter() - t0)
        rows.append(dict(spent))
    step = float(np.median(steps))
    parts = {label: float(np.median([sum(r.get(n, 0.0) for n in names) for r in rows]))
             for label, names in CALLS.items()}
    T, B, H, L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
    fwd_gemm, bwd_gemm = per_step_gemm_seconds(B, H, GATES[spec["cell"]], T,
                                               config.step_layouts)
    out = {
        "config": a.config, **spec, "blas": config.blas, "step_weights": config.step_weights,
        "step_ms": step * 1e3,
        "recurrent GEMMs forward (timed alone)": min(L * fwd_gemm, parts["recurrence forward"]) * 1e3,
        "recurrent elementwise forward": max(parts["recurrence forward"] - L * fwd_gemm, 0) * 1e3,
        "recurrent GEMMs backward (timed alone)": min(L * bwd_gemm, parts["recurrence backward"]) * 1e3,
        "recurrent elementwise backward": max(parts["recurrence backward"] - L * bwd_gemm, 0) * 1e3,
    }
    for label in list(CALLS)[2:]:
        out[label] = parts[label] * 1e3
    out["optimizer, clipping, Python glue (the rest)"] = (step - sum(parts.values())) * 1e3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
