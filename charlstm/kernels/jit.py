"""The one place that sets how kernels are compiled.

- cache=True: machine code is kept on disk, so the second start does not recompile.
- error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising; the
  per-division check Python semantics need blocks vectorisation of the gate loops.
- fastmath={"contract"} only: multiplies and adds may fuse into FMA instructions (one
  rounding instead of two, never less accurate), and nothing is reassociated, so results
  stay deterministic and the float64 gradient checks keep IEEE semantics otherwise. The
  fused LSTM gate step went from 2.4 to 1.7 ns per hidden unit on an AMD EPYC Zen 5
  (benchmarks/activation_cost.py); the other fastmath flags (reassociation, no NaNs)
  would change results and hide NaNs.
- nogil=True: kernels touch no Python objects, so they release the GIL; the shards of a
  batch (shards.py) then run their kernels on separate cores from separate threads.
"""
from numba import njit

JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)


def kernel(fn=None, **extra):
    """``@kernel`` or ``@kernel(inline="always")``: njit with charlstm's options."""
    options = dict(JIT_OPTIONS, **extra)
    if fn is None:
        return lambda f: njit(**options)(f)
    return njit(**options)(fn)
