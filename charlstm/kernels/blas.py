"""Matrix products for the orchestration code, through the BLAS that Numba calls.

Numba's np.dot uses SciPy's OpenBLAS, NumPy's np.dot its own: two thread pools that, on
a 2-core machine, spin against each other (a step took twice as long with both active).
Routing every product of a training step through this one keeps a single pool busy.
"""
import numpy as np

from .jit import kernel


@kernel
def matmul(a, b, out):
    """out = a @ b for 2-D arrays (C- or Fortran-ordered views are fine)."""
    np.dot(a, b, out)


@kernel
def matmul_add(a, b, out):
    """out += a @ b."""
    out += np.dot(a, b)
