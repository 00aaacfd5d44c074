"""The one place that sets how kernels are compiled.

- cache=True: machine code is kept on disk, so the second start does not recompile.
- error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising; the
  per-division check Python semantics need blocks vectorisation of the gate loops.
- fastmath stays off: the float64 gradient checks must see IEEE arithmetic.
- nogil=True: kernels touch no Python objects, so they release the GIL; the shards of a
  batch (shards.py) then run their kernels on separate cores from separate threads.
"""
from numba import njit

JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath=False, nogil=True)


def kernel(fn=None, **extra):
    """``@kernel`` or ``@kernel(inline="always")``: njit with charlstm's options."""
    options = dict(JIT_OPTIONS, **extra)
    if fn is None:
        return lambda f: njit(**options)(f)
    return njit(**options)(fn)
