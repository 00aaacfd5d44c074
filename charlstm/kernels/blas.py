"""Matrix products for kernels and orchestration, through NumPy's own OpenBLAS.

Why not Numba's np.dot: it calls SciPy's OpenBLAS, a second library with its own thread
pool. With both in use, the two pools spun against each other on 2 cores (a step took
twice as long), and SciPy's build ran the per-step shapes ([32, 256] x [256, 1024]) at
38-40 GFLOP/s where NumPy's reaches 60-65 (measured on the development machine, AVX2).

So the kernels call NumPy's CBLAS ``sgemm``/``dgemm`` (64-bit integer interface) by
symbol name. The symbol is registered with LLVM at import, before any kernel is compiled
or loaded from the cache, and cached machine code refers to it by name, never by
address, so caching stays safe. Where NumPy's OpenBLAS cannot be found (a NumPy not
built from PyPI's wheels) or ``CHARLSTM_BLAS=numpy`` is set, the same symbols point to a
slow but correct callback into ``numpy.dot``.

Operands are C-contiguous 2-D arrays; ``gemm_nt(a, b, out)`` computes ``a @ b.T`` from
``b`` itself, so no transposed copy is ever made.
"""
from __future__ import annotations

import ctypes
import glob
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload

from .jit import kernel

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT = ctypes.c_int
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _cblas_prototype(real):
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, real, _PTR, _I64,
                            _PTR, _I64, real, _PTR, _I64)


def _cblas_gemv_prototype(real):
    return ctypes.CFUNCTYPE(None, _INT, _INT, _I64, _I64, real, _PTR, _I64, _PTR, _I64, real,
                            _PTR, _I64)


_PROTOTYPES = {"s": _cblas_prototype(ctypes.c_float), "d": _cblas_prototype(ctypes.c_double)}
_GEMV_PROTOTYPES = {"s": _cblas_gemv_prototype(ctypes.c_float),
                    "d": _cblas_gemv_prototype(ctypes.c_double)}


def _numpy_openblas_lib():
    """NumPy's bundled OpenBLAS (PyPI wheels ship it in numpy.libs/) and the prefix of its
    CBLAS names, or None if it is not there."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "lib*openblas64*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            if hasattr(lib, f"{prefix}cblas_sgemm64_"):
                return lib, prefix
    return None


def _numpy_openblas(found):
    """Addresses of sgemm, dgemm, sgemv and dgemv in NumPy's OpenBLAS."""
    lib, prefix = found
    return {f"{k}{op}": ctypes.cast(getattr(lib, f"{prefix}cblas_{k}{op}64_"), ctypes.c_void_p).value
            for k in "sd" for op in ("gemm", "gemv")}


def _fallback(kind):
    """A CBLAS-shaped gemm implemented with numpy.dot, for machines without NumPy's
    OpenBLAS: correct, and slower."""
    dtype = np.float32 if kind == "s" else np.float64

    def view(ptr, rows, cols, ld):
        buf = (ctypes.c_byte * (rows * ld * dtype().itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype).reshape(rows, ld)[:, :cols]

    def gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        A = view(a, k if trans_a == _TRANS else m, m if trans_a == _TRANS else k, lda)
        B = view(b, n if trans_b == _TRANS else k, k if trans_b == _TRANS else n, ldb)
        C = view(c, m, n, ldc)
        A = A.T if trans_a == _TRANS else A
        B = B.T if trans_b == _TRANS else B
        product = alpha * np.dot(A, B)
        if beta == 0:
            C[...] = product
        else:
            C[...] = beta * C + product

    return _PROTOTYPES[kind](gemm)


def _fallback_gemv(kind):
    dtype = np.float32 if kind == "s" else np.float64

    def vector(ptr, n):
        buf = (ctypes.c_byte * (n * dtype().itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype)

    def gemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        buf = (ctypes.c_byte * (m * lda * dtype().itemsize)).from_address(a)
        A = np.frombuffer(buf, dtype=dtype).reshape(m, lda)[:, :n]
        if trans == _TRANS:
            X, Y = vector(x, m), vector(y, n)
            product = alpha * (X @ A)
        else:
            X, Y = vector(x, n), vector(y, m)
            product = alpha * (A @ X)
        Y[...] = product if beta == 0 else beta * Y + product

    return _GEMV_PROTOTYPES[kind](gemv)


_KEEP_ALIVE = []


def _register(found) -> str:
    if found is not None:
        for name, address in _numpy_openblas(found).items():
            llvm.add_symbol(f"charlstm_{name}", address)
        return "numpy-openblas"
    for kind in "sd":
        for op, make in (("gemm", _fallback), ("gemv", _fallback_gemv)):
            callback = make(kind)
            _KEEP_ALIVE.append(callback)
            llvm.add_symbol(f"charlstm_{kind}{op}", ctypes.cast(callback, ctypes.c_void_p).value)
    return "numpy.dot callback"


_OPENBLAS = None if os.environ.get("CHARLSTM_BLAS") == "numpy" else _numpy_openblas_lib()
BACKEND = _register(_OPENBLAS)


class BlasThreads:
    """The number of threads each GEMM call uses, where it can be set (NumPy's OpenBLAS).

    One setting for the whole process. Shards of a batch computed on separate cores set
    it to 1 while they run: two callers each splitting their products over both cores
    made the threads fight, and a step took twice as long (benchmarks/overlap_probe.py).
    """

    def __init__(self, found=_OPENBLAS):
        self._get = self._set = None
        if found is not None:
            lib, prefix = found
            get = getattr(lib, f"{prefix}openblas_get_num_threads64_", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads64_", None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                self._get, self._set = get, set_

    @property
    def settable(self) -> bool:
        return self._set is not None

    def get(self) -> int | None:
        return self._get() if self._get is not None else None

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(n)


BLAS_THREADS = BlasThreads()


def _signature(real):
    return types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                      real, types.voidptr, types.int64, types.voidptr, types.int64, real,
                      types.voidptr, types.int64)


_sgemm = types.ExternalFunction("charlstm_sgemm", _signature(types.float32))
_dgemm = types.ExternalFunction("charlstm_dgemm", _signature(types.float64))


def _gemv_signature(real):
    return types.void(types.int32, types.int32, types.int64, types.int64, real, types.voidptr,
                      types.int64, types.voidptr, types.int64, real, types.voidptr, types.int64)


_sgemv = types.ExternalFunction("charlstm_sgemv", _gemv_signature(types.float32))
_dgemv = types.ExternalFunction("charlstm_dgemv", _gemv_signature(types.float64))


def _gemv(trans, m, n, a, lda, x, beta, y):
    """CBLAS row-major gemv: y = op(a) @ x + beta * y; compiled only."""
    raise NotImplementedError


@overload(_gemv, inline="always")
def _gemv_overload(trans, m, n, a, lda, x, beta, y):
    if a.dtype == types.float32:
        def impl(trans, m, n, a, lda, x, beta, y):
            _sgemv(_ROW_MAJOR, trans, m, n, np.float32(1.0), a.ctypes.data, lda, x.ctypes.data, 1,
                   np.float32(beta), y.ctypes.data, 1)
        return impl

    def impl(trans, m, n, a, lda, x, beta, y):
        _dgemv(_ROW_MAJOR, trans, m, n, 1.0, a.ctypes.data, lda, x.ctypes.data, 1, float(beta),
               y.ctypes.data, 1)
    return impl


def _gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """CBLAS row-major gemm: c = op(a) @ op(b) + beta * c; compiled only."""
    raise NotImplementedError


@overload(_gemm, inline="always")
def _gemm_overload(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    for arr in (a, b, c):
        if not isinstance(arr, types.Array) or arr.layout != "C":
            raise TypingError("charlstm gemm needs C-contiguous arrays")
    if a.dtype == b.dtype == c.dtype == types.float32:
        def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
            _sgemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, np.float32(1.0), a.ctypes.data, lda,
                   b.ctypes.data, ldb, np.float32(beta), c.ctypes.data, ldc)
        return impl
    if a.dtype == b.dtype == c.dtype == types.float64:
        def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
            _dgemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, lda,
                   b.ctypes.data, ldb, float(beta), c.ctypes.data, ldc)
        return impl
    raise TypingError("charlstm gemm needs float32 or float64 arrays of one dtype")


@kernel(inline="always")
def gemm_nn(a, b, out, beta=0.0):
    """out = a @ b + beta * out; a [m, k], b [k, n], out [m, n]."""
    m, k = a.shape
    n = b.shape[1]
    if m == 1:  # one row: gemv streams b once; OpenBLAS's gemm runs this 2-3x slower
        _gemv(_TRANS, k, n, b, n, a, beta, out)
    else:
        _gemm(_NO_TRANS, _NO_TRANS, m, n, k, a, k, b, n, beta, out, n)


@kernel(inline="always")
def gemm_nt(a, b, out, beta=0.0):
    """out = a @ b.T + beta * out; a [m, k], b [n, k], out [m, n]."""
    m, k = a.shape
    n = b.shape[0]
    if m == 1:
        _gemv(_NO_TRANS, n, k, b, k, a, beta, out)
    else:
        _gemm(_NO_TRANS, _TRANS, m, n, k, a, k, b, k, beta, out, n)


@kernel(inline="always")
def gemm_tn(a, b, out, beta=0.0):
    """out = a.T @ b + beta * out; a [k, m], b [k, n], out [m, n]."""
    k, m = a.shape
    n = b.shape[1]
    _gemm(_TRANS, _NO_TRANS, m, n, k, a, m, b, n, beta, out, n)


# Entry points for Python code (the orchestration in network.py): one compiled call each.
@kernel
def matmul_nn(a, b, out, beta=0.0):
    gemm_nn(a, b, out, beta)


@kernel
def matmul_nt(a, b, out, beta=0.0):
    gemm_nt(a, b, out, beta)


@kernel
def matmul_tn(a, b, out, beta=0.0):
    gemm_tn(a, b, out, beta)
