"""Would the chunk products gain from charlstm's panel kernel? Times a@W.T through the
chunk library (NumPy's OpenBLAS here, one thread) against packing W into panels and
running kernels/panels.py's product, at chunk shapes of S, M and L, interleaved.

    python benchmarks/panel_chunk.py

Run with OPENBLAS_CORETYPE unset to see the kernels a user's OpenBLAS picks.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.kernels.blas import BLAS_THREADS, matmul_nt  # noqa: E402
from charlstm.kernels.jit import kernel  # noqa: E402
from charlstm.kernels.panels import pack_panels, panel_buffer, panel_product  # noqa: E402

# (rows, k, n): M's upper input projection, the decoders of S and M, L's projection
SHAPES = [(1024, 256, 1024), (1024, 128, 65), (1024, 256, 65), (2048, 512, 2048)]


@kernel
def _packed_product(a, w, panels, out):
    pack_panels(w, panels, True)
    panel_product(a, panels, out)


def main(rounds=5, calls=20):
    BLAS_THREADS.set(1)
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        panels = panel_buffer(k, n, np.float32)
        out = np.empty((m, n), np.float32)
        candidates = {"OpenBLAS": (matmul_nt, (a, w, out)),
                      "panels (packing included)": (_packed_product, (a, w, panels, out))}
        seconds = {name: [] for name in candidates}
        for fn, args in candidates.values():
            fn(*args)  # compile, warm
        for _ in range(rounds):
            for name, (fn, args) in candidates.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(*args)
                seconds[name].append((time.perf_counter() - t0) / calls)
        flops = 2.0 * m * k * n
        print(f"[{m}, {k}] x [{k}, {n}]: " + ", ".join(
            f"{name} {np.median(s) * 1e6:.0f} us ({flops / np.median(s) / 1e9:.0f} GFLOP/s)"
            for name, s in seconds.items()))


if __name__ == "__main__":
    main()
