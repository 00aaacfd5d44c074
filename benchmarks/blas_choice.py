"""What `train --blas auto` measures, printed: each installed BLAS library at the step
and chunk products of S, M, L and R, one BLAS thread per shard, and the choice it makes.

    python benchmarks/blas_choice.py [--threads 2] [--rounds 5]

Per library and direction, one time step's recurrent product with weight_hh as stored,
transposed, and (oneMKL) packed once per chunk; the chunk products summed over a shard's
step. With the ``blis`` wheel installed, BLIS's typed sgemm is timed at the step shapes
too, beside the others (charlstm does not use it: see docs/BENCHMARKS.md).
Run with OPENBLAS_CORETYPE unset to see the kernels a user's OpenBLAS picks.
"""
import argparse
import ctypes
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS, blas_library_summary, machine_summary  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.kernels.blas_libraries import available, load  # noqa: E402
from charlstm.machine.tune import _Product, tune  # noqa: E402


def blis_step_seconds(rows, H, GH, reps=200, rounds=5):
    """BLIS (the ``blis`` wheel) at one forward step's product, h @ W.T, single-threaded;
    None without the wheel. Returns (seconds, the configuration BLIS picked)."""
    try:
        import blis
    except ImportError:
        return None
    lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(blis.__file__), "cy*.so"))[0])
    lib.bli_arch_string.restype = ctypes.c_char_p
    arch = lib.bli_arch_string(lib.bli_arch_query_id()).decode()
    lib.bli_thread_set_num_threads(ctypes.c_int64(1))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    rng = np.random.default_rng(0)
    h = rng.standard_normal((rows, H)).astype(np.float32)
    w = rng.standard_normal((GH, H)).astype(np.float32)
    out = np.empty((rows, GH), np.float32)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    # Typed API with strides: W.T is W read with row stride 1 and column stride H.
    args = (i64(0), i64(0), i64(rows), i64(GH), i64(H), ctypes.byref(one), ptr(h.ctypes.data),
            i64(H), i64(1), ptr(w.ctypes.data), i64(1), i64(H), ctypes.byref(zero),
            ptr(out.ctypes.data), i64(GH), i64(1))
    lib.bli_sgemm(*args)
    assert np.allclose(out, h @ w.T, rtol=1e-3, atol=1e-3)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            lib.bli_sgemm(*args)
        times.append((time.perf_counter() - t0) / reps)
    return float(np.median(times)), arch


def unpadded_transposed_seconds(config, rounds=5):
    """The forward step product with a transposed weight_hh whose rows are not padded
    (Network pads them: blas.TRANSPOSED_PAD), per installed library."""
    rows = -(-config.batch_size // min(config.threads, config.batch_size))
    H, GH = config.hidden_size, config.gates * config.hidden_size
    product = _Product(rows, GH, H, False, False, np.random.default_rng(0), pad=0)
    out = {}
    for name in available():
        gemm = load(name).gemm("s")
        product.seconds(gemm, 3)
        reps = max(1, int(4e-3 * 5e10 / product.flops))
        out[name] = float(np.median([product.seconds(gemm, reps) for _ in range(rounds)]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS))
    a = ap.parse_args()
    machine = machine_summary()
    print(f"{machine['cpu']}, {machine['simd']}, AMX {'yes' if machine['amx'] else 'no'}")
    for name, text in blas_library_summary().items():
        print(f"  {name}: {text}")
    for name in a.config or ["S", "M", "L", "R"]:
        spec = CONFIGS[name]
        config = TrainConfig(threads=a.threads, **spec)
        t0 = time.perf_counter()
        choice = tune(config, 65, rounds=a.rounds)
        took = time.perf_counter() - t0
        rows = -(-spec["batch_size"] // min(a.threads, spec["batch_size"]))
        print(f"\n{name} ({spec['cell']} H={spec['hidden_size']}, {rows} rows per shard): "
              f"{choice.describe()} (measured in {took:.2f} s)")
        for key, seconds in sorted(choice.timings["step_product_s"].items()):
            print(f"  step product {key:28s} {seconds * 1e6:8.1f} us")
        for lib, seconds in choice.timings["chunk_s"].items():
            print(f"  chunk products {lib:26s} {seconds * 1e3:8.2f} ms per shard step")
        for lib, seconds in unpadded_transposed_seconds(config).items():
            print(f"  step product {lib + '/forward/transposed, unpadded':28s} {seconds * 1e6:8.1f} us")
        blis = blis_step_seconds(rows, spec["hidden_size"], 4 * spec["hidden_size"]
                                 if spec["cell"] == "lstm" else spec["hidden_size"])
        if blis is not None:
            print(f"  step product {'blis/forward (' + blis[1] + ')':28s} {blis[0] * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
