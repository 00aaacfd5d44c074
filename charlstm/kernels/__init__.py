"""Numba kernels. Each module pairs a forward kernel with its backward twin.

Every kernel is compiled lazily for the dtype it is called with: float32 for training,
float64 for the gradient checks. Machine code is cached on disk, stamped with the source
of this whole package, so the second start of charlstm does not recompile and an edit
anywhere here does (jit.py). The matrix products go through blas.py, which points them
at the library a run chose (blas_libraries.py).
"""

from .environment import prepare as _prepare

# Before any module of the package imports Numba, which reads the environment once.
_prepare()
