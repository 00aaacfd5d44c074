"""The BLAS libraries charlstm can run its matrix products on, found and described.

- ``openblas``: the OpenBLAS inside NumPy's PyPI wheels (numpy.libs/), always there on
  such an install. It picks its kernels for the CPU when it loads ("Haswell",
  "SkylakeX", "Zen", ...).
- ``mkl``: Intel oneMKL's single dynamic library ``libmkl_rt`` from the ``mkl`` wheel
  (``pip install 'charlstm[mkl]'``). It is loaded sequential (it computes on the calling
  thread: charlstm's own shards give the parallelism) and in conditional numerical
  reproducibility mode, so a given CPU rounds the same way in every run, whatever the
  alignment of the arrays; that is what keeps a resume bit-identical.
- ``numpy``: a slow, correct callback into ``numpy.dot``, for NumPy builds without a
  findable OpenBLAS.

Each library is reached through CBLAS functions with 64-bit integers, by address, so the
compiled kernels (kernels/blas.py) can be pointed at any of them without recompiling.
"""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from ..errors import UserError

LIBRARY_NAMES = ("openblas", "mkl", "numpy")
EXTRA_FOR = {"mkl": "mkl"}  # the optional extra that installs a library

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
PACK_B, PACKED = 162, 151  # CBLAS_IDENTIFIER CblasBMatrix, CBLAS_STORAGE CblasPacked (oneMKL)
_INT, _I64, _PTR = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p


def parse_blas(spec: str) -> tuple[str, str]:
    """(step library, chunk library) of a choice written ``LIB`` or ``STEP/CHUNK`` (the
    roles of kernels/blas.py). Raises ValueError naming the valid libraries."""
    parts = spec.split("/") if isinstance(spec, str) else []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p not in LIBRARY_NAMES for p in parts):
        raise ValueError(f"BLAS choice {spec!r} is not LIBRARY or STEP/CHUNK with libraries "
                         f"from {', '.join(LIBRARY_NAMES)}")
    return parts[0], parts[1]


def format_blas(step: str, chunk: str) -> str:
    return step if step == chunk else f"{step}/{chunk}"


def cblas_gemm_prototype(real):
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, real, _PTR, _I64,
                            _PTR, _I64, real, _PTR, _I64)


def cblas_gemv_prototype(real):
    return ctypes.CFUNCTYPE(None, _INT, _INT, _I64, _I64, real, _PTR, _I64, _PTR, _I64, real,
                            _PTR, _I64)


GEMM_PROTOTYPES = {"s": cblas_gemm_prototype(ctypes.c_float),
                   "d": cblas_gemm_prototype(ctypes.c_double)}
GEMV_PROTOTYPES = {"s": cblas_gemv_prototype(ctypes.c_float),
                   "d": cblas_gemv_prototype(ctypes.c_double)}


@dataclass
class Library:
    """One loaded BLAS: the addresses of its CBLAS ``sgemm``, ``dgemm``, ``sgemv`` and
    ``dgemv`` (64-bit integer interface), what it is, and how to set its threads."""

    name: str
    addresses: dict[str, int]
    version: str
    kernel: str  # the code path it runs on this CPU, as the library reports it
    set_threads: Callable[[int], None] | None = None
    get_threads: Callable[[], int] | None = None
    keep_alive: list = field(default_factory=list)  # ctypes callbacks behind the addresses
    # oneMKL's packed GEMM: "{s,d}gemm_pack", "{s,d}gemm_compute" addresses; empty elsewhere.
    packed: dict[str, int] = field(default_factory=dict)
    pack_size: Callable[[str, int, int, int], int] | None = None
    # oneMKL's bfloat16 GEMM, bfloat16 operands into float32 (cblas_gemm_bf16bf16f32 and
    # its pack/compute pair, which run on AMX tiles where the CPU has them): addresses of
    # "gemm", "pack" and "compute"; empty elsewhere. ``bf16_pack_size(m, n, k)``: bytes of a
    # packed B operand.
    bf16: dict[str, int] = field(default_factory=dict)
    bf16_pack_size: Callable[[int, int, int], int] | None = None

    @property
    def packs(self) -> bool:
        return bool(self.packed)

    @property
    def has_bf16(self) -> bool:
        return bool(self.bf16)

    def describe(self) -> str:
        return f"{self.version} ({self.kernel})"

    def gemm(self, kind: str):
        """A ctypes-callable CBLAS gemm of this library, for measuring it from Python."""
        return GEMM_PROTOTYPES[kind](self.addresses[f"{kind}gemm"])


class LibraryUnavailable(UserError):
    """The named library cannot be loaded here; the message says how to get it."""


# -- OpenBLAS (NumPy's) ----------------------------------------------------------------------

def _numpy_openblas_path() -> tuple[ctypes.CDLL, str] | None:
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


def _load_openblas() -> Library:
    found = _numpy_openblas_path()
    if found is None:
        raise LibraryUnavailable(
            "NumPy's OpenBLAS was not found (a NumPy not installed from PyPI's wheels); "
            "use --blas numpy, or install NumPy with pip")
    lib, prefix = found
    addresses = {f"{k}{op}": ctypes.cast(getattr(lib, f"{prefix}cblas_{k}{op}64_"), _PTR).value
                 for k in "sd" for op in ("gemm", "gemv")}

    def text(symbol):
        fn = getattr(lib, f"{prefix}{symbol}64_", None)
        if fn is None:
            return None
        fn.restype, fn.argtypes = ctypes.c_char_p, []
        return fn().decode(errors="replace").strip()

    config = text("openblas_get_config") or "OpenBLAS"
    version = " ".join(config.split()[:2])  # "OpenBLAS 0.3.31.188.0"
    kernel = (text("openblas_get_corename") or "unknown") + " kernels"
    get = getattr(lib, f"{prefix}openblas_get_num_threads64_", None)
    set_ = getattr(lib, f"{prefix}openblas_set_num_threads64_", None)
    if get is not None and set_ is not None:
        get.restype, get.argtypes = ctypes.c_int, []
        set_.restype, set_.argtypes = None, [ctypes.c_int]
    return Library("openblas", addresses, version, kernel, set_, get)


# -- oneMKL ----------------------------------------------------------------------------------

_MKL_THREADING_SEQUENTIAL = 1
_MKL_CBWR_AUTO = 2
_MKL_CBWR_STRICT = 0x10000  # results independent of the arrays' alignment
_MKL_CBWR_SUCCESS = 0

def _mkl_candidates() -> list[str]:
    """Where libmkl_rt is: the path in CHARLSTM_MKL_LIBRARY if set (a cluster's oneAPI
    install, say), else where the ``mkl`` wheel puts it: the environment's lib/ (a venv's
    too), the user base's lib/, and whatever the dynamic loader finds."""
    if os.environ.get("CHARLSTM_MKL_LIBRARY"):
        return [os.environ["CHARLSTM_MKL_LIBRARY"]]
    roots = {sys.prefix, sys.base_prefix, site.getuserbase()}
    paths = []
    for root in sorted(roots):
        paths += sorted(glob.glob(os.path.join(root, "lib", "libmkl_rt.so*")), reverse=True)
    return paths + ["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"]


def _load_mkl() -> Library:
    lib = None
    for path in _mkl_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "cblas_sgemm_64"):
            break
        lib = None
    if lib is None:
        where = os.environ.get("CHARLSTM_MKL_LIBRARY")
        raise LibraryUnavailable(
            (f"CHARLSTM_MKL_LIBRARY={where} is not a oneMKL libmkl_rt with a 64-bit integer "
             f"CBLAS; point it at one, or unset it" if where else
             "oneMKL is not installed; install it with: pip install 'charlstm[mkl]'"))
    # Both must come before MKL computes anything. (The C names: MKL's lower-case ones
    # are its Fortran interface and take pointers.)
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    lib.MKL_CBWR_Set.argtypes, lib.MKL_CBWR_Set.restype = [ctypes.c_int], ctypes.c_int
    if lib.MKL_CBWR_Set(_MKL_CBWR_AUTO | _MKL_CBWR_STRICT) != _MKL_CBWR_SUCCESS:
        lib.MKL_CBWR_Set(_MKL_CBWR_AUTO)
    addresses = {f"{k}{op}": ctypes.cast(getattr(lib, f"cblas_{k}{op}_64"), _PTR).value
                 for k in "sd" for op in ("gemm", "gemv")}
    version = "oneMKL"
    if hasattr(lib, "MKL_Get_Version_String"):
        buf = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buf, len(buf))
        words = buf.value.decode(errors="replace").split()
        if "Version" in words and words.index("Version") + 1 < len(words):
            version = "oneMKL " + words[words.index("Version") + 1].split("-")[0]
    # The instructions MKL's dispatcher serves this CPU with ("Intel(R) Architecture
    # processors" is its generic path, which it takes on AMD CPUs).
    kernel = "unknown code path"
    if hasattr(lib, "MKL_Get_Version"):
        class _MKLVersion(ctypes.Structure):  # mkl_types.h, oneMKL 2021 and later
            _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int),
                        ("update", ctypes.c_int), ("patch", ctypes.c_int),
                        ("status", ctypes.c_char_p), ("build", ctypes.c_char_p),
                        ("processor", ctypes.c_char_p), ("platform", ctypes.c_char_p),
                        ("_spare", ctypes.c_char * 64)]
        v = _MKLVersion()
        lib.MKL_Get_Version(ctypes.byref(v))
        if v.processor:
            kernel = v.processor.decode(errors="replace").strip()
    packed = {f"{k}gemm_{op}": ctypes.cast(getattr(lib, f"cblas_{k}gemm_{op}_64"), _PTR).value
              for k in "sd" for op in ("pack", "compute")}
    sizes = {}
    for k in "sd":
        fn = getattr(lib, f"cblas_{k}gemm_pack_get_size_64")
        fn.restype, fn.argtypes = ctypes.c_size_t, [_INT, _I64, _I64, _I64]
        sizes[k] = fn

    def pack_size(kind: str, m: int, n: int, k: int) -> int:
        """Bytes of the packed B operand (weight) of an m x n x k product."""
        return int(sizes[kind](PACK_B, m, n, k))

    bf16, bf16_sizer = {}, None
    if hasattr(lib, "cblas_gemm_bf16bf16f32_compute_64"):  # oneMKL 2020 and later
        bf16 = {op: ctypes.cast(getattr(lib, f"cblas_gemm_bf16bf16f32{suffix}_64"), _PTR).value
                for op, suffix in (("gemm", ""), ("pack", "_pack"), ("compute", "_compute"))}
        bf16_size = lib.cblas_gemm_bf16bf16f32_pack_get_size_64
        bf16_size.restype, bf16_size.argtypes = ctypes.c_size_t, [_INT, _I64, _I64, _I64]

        def bf16_pack_size(m: int, n: int, k: int) -> int:
            """Bytes of the packed bfloat16 B operand of an m x n x k product."""
            return int(bf16_size(PACK_B, m, n, k))

        bf16_sizer = bf16_pack_size
    return Library("mkl", addresses, version, kernel, packed=packed, pack_size=pack_size,
                   bf16=bf16, bf16_pack_size=bf16_sizer)


# -- numpy.dot callbacks ---------------------------------------------------------------------

def _numpy_gemm(kind):
    dtype = np.float32 if kind == "s" else np.float64

    def view(ptr, rows, cols, ld):
        buf = (ctypes.c_byte * (rows * ld * dtype().itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype).reshape(rows, ld)[:, :cols]

    def gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        A = view(a, k if trans_a == TRANS else m, m if trans_a == TRANS else k, lda)
        B = view(b, n if trans_b == TRANS else k, k if trans_b == TRANS else n, ldb)
        C = view(c, m, n, ldc)
        A = A.T if trans_a == TRANS else A
        B = B.T if trans_b == TRANS else B
        product = alpha * np.dot(A, B)
        if beta == 0:
            C[...] = product
        else:
            C[...] = beta * C + product

    return GEMM_PROTOTYPES[kind](gemm)


def _numpy_gemv(kind):
    dtype = np.float32 if kind == "s" else np.float64

    def vector(ptr, n):
        buf = (ctypes.c_byte * (n * dtype().itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype)

    def gemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
        buf = (ctypes.c_byte * (m * lda * dtype().itemsize)).from_address(a)
        A = np.frombuffer(buf, dtype=dtype).reshape(m, lda)[:, :n]
        if trans == TRANS:
            X, Y = vector(x, m), vector(y, n)
            product = alpha * (X @ A)
        else:
            X, Y = vector(x, n), vector(y, m)
            product = alpha * (A @ X)
        Y[...] = product if beta == 0 else beta * Y + product

    return GEMV_PROTOTYPES[kind](gemv)


def cblas_compute_prototype(real):
    """cblas_?gemm_compute (64-bit integers): layout, transa, transb, m, n, k, a, lda, b,
    ldb, beta, c, ldc; one operand packed by cblas_?gemm_pack."""
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64,
                            real, _PTR, _I64)


def cblas_pack_prototype(real):
    """cblas_?gemm_pack (64-bit integers): layout, identifier, trans, m, n, k, alpha, src,
    ld, dest."""
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, real, _PTR, _I64, _PTR)


# cblas_gemm_bf16bf16f32: as sgemm, with uint16 bfloat16 operands and a float32 result.
BF16_GEMM_PROTOTYPE = cblas_gemm_prototype(ctypes.c_float)
# cblas_gemm_bf16bf16f32_pack: layout, identifier, trans, m, n, k, src, ld, dest (no alpha).
BF16_PACK_PROTOTYPE = ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, _PTR, _I64, _PTR)
# cblas_gemm_bf16bf16f32_compute: its transa and transb are MKL_INT, 64-bit here.
BF16_COMPUTE_PROTOTYPE = ctypes.CFUNCTYPE(None, _INT, _I64, _I64, _I64, _I64, _I64,
                                          ctypes.c_float, _PTR, _I64, _PTR, _I64,
                                          ctypes.c_float, _PTR, _I64)
COMPUTE_PROTOTYPES = {"s": cblas_compute_prototype(ctypes.c_float),
                      "d": cblas_compute_prototype(ctypes.c_double)}
PACK_PROTOTYPES = {"s": cblas_pack_prototype(ctypes.c_float),
                   "d": cblas_pack_prototype(ctypes.c_double)}


def unpacked_compute(kind):
    """What the packed-product symbol points to on a library that cannot pack: it fills
    the output with NaN, so a run that asked for packed weights without such a library
    (which resolve and the checkpoint loader refuse) could never pass for a correct one."""
    dtype = np.float32 if kind == "s" else np.float64

    def compute(layout, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
        buf = (ctypes.c_byte * (m * ldc * dtype().itemsize)).from_address(c)
        np.frombuffer(buf, dtype=dtype).reshape(m, ldc)[:, :n] = np.nan

    return COMPUTE_PROTOTYPES[kind](compute)


def _load_numpy() -> Library:
    callbacks = {f"{k}gemm": _numpy_gemm(k) for k in "sd"}
    callbacks.update({f"{k}gemv": _numpy_gemv(k) for k in "sd"})
    addresses = {name: ctypes.cast(cb, _PTR).value for name, cb in callbacks.items()}
    return Library("numpy", addresses, f"NumPy {np.__version__}", "numpy.dot callback",
                   keep_alive=list(callbacks.values()))


_LOADERS = {"openblas": _load_openblas, "mkl": _load_mkl, "numpy": _load_numpy}


@lru_cache(maxsize=None)
def _load_cached(name: str):
    try:
        return _LOADERS[name]()
    except LibraryUnavailable as e:
        return e


def load(name: str) -> Library:
    """The library ``name`` (one of LIBRARY_NAMES), loaded once per process.

    Raises LibraryUnavailable (with the fix in its message) when it is not installed, and
    ValueError for an unknown name."""
    if name not in _LOADERS:
        raise ValueError(f"unknown BLAS library {name!r}; choose from {', '.join(LIBRARY_NAMES)}")
    found = _load_cached(name)
    if isinstance(found, LibraryUnavailable):
        raise found
    return found


def available() -> list[str]:
    """The fast libraries that load here (openblas, mkl), in order of preference on a tie."""
    out = []
    for name in ("openblas", "mkl"):
        try:
            load(name)
            out.append(name)
        except LibraryUnavailable:
            pass
    return out
