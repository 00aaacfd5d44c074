"""Matrix products for kernels and orchestration, through a BLAS chosen at run time.

Why not Numba's np.dot: it calls SciPy's OpenBLAS, a second library with its own thread
pool. With both in use, the two pools spun against each other on 2 cores (a step took
twice as long), and SciPy's build ran the per-step shapes ([32, 256] x [256, 1024]) at
38-40 GFLOP/s where NumPy's reaches 60-65 (measured on an AMD EPYC, AVX2).

So the kernels call CBLAS ``gemm``/``gemv`` (64-bit integer interface) through symbols
of charlstm's own, which ``bind`` points at a library (blas_libraries.py) before any
kernel is compiled or loaded from the cache; cached machine code refers to the symbols
by name, never by address, so caching stays safe and no choice needs a recompile.

Two roles can sit on two libraries, because no library is best at both (see
docs/BENCHMARKS.md): the **step** products, one per time step inside a recurrence
([B, H] x [H, G*H] and back, a few rows each), and the **chunk** products, everything
else (projections, decoder and weight gradients over all T*B rows). A BLAS choice is
written ``LIBRARY`` (both roles) or ``STEP/CHUNK``, e.g. ``mkl/openblas``.

Operands are C-contiguous 2-D arrays; ``gemm_nt(a, b, out)`` computes ``a @ b.T`` from
``b`` itself, so no transposed copy is ever made.
"""
from __future__ import annotations

import ctypes
import os
import sys

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload

from ..errors import UserError
from . import blas_libraries
from .blas_libraries import NO_TRANS as _NO_TRANS, ROW_MAJOR as _ROW_MAJOR
from .blas_libraries import PACKED as _PACKED_STORAGE, TRANS as _TRANS, LibraryUnavailable
from .blas_libraries import format_blas, parse_blas  # noqa: F401 (charlstm.kernels.blas's API)
from .jit import kernel
from .bf16 import bf16_step_product, round_rows
from .panels import panel_product

ROLES = ("step", "chunk")
# Which copy of weight_hh a recurrence's step products read (config.step_weights): as
# stored ([G*H, H], PyTorch's layout), a transposed copy ([H, G*H]), or packed once per
# chunk by the step library into its own kernel layout (oneMKL's cblas_?gemm_pack, what
# oneDNN's RNN does), so the T products of a chunk skip re-packing it.
# Or, not through a BLAS at all, packed once per chunk into the column panels of charlstm's
# own product (panels.py).
STEP_LAYOUTS = {"stored": 0, "transposed": 1, "packed": 2, "panels": 3}
_STORED, _TRANSPOSED, _PACKED, _PANELS = (STEP_LAYOUTS["stored"], STEP_LAYOUTS["transposed"],
                                          STEP_LAYOUTS["packed"], STEP_LAYOUTS["panels"])
# Columns of padding after each row of a transposed weight_hh copy. Its rows are G*H
# floats, a multiple of 4 KB at M and L, and rows a multiple of 4 KB apart fall into the
# same cache sets, more or less depending on where the pages land. Whole training steps
# with the transposed copy took 38.9-44.4 ms at M unpadded and 33.6-35.7 ms padded, 385-413
# against 357-367 ms at L (AMD EPYC Zen 5; benchmarks/padding_ab.py, three rounds).
TRANSPOSED_PAD = 16
_SYMBOL_SUFFIX = {"step": "_step", "chunk": ""}
DEFAULT_BLAS = "openblas"


def _kernels_linked() -> bool:
    """Whether any kernel of this package that calls a BLAS has been compiled or loaded in
    this process: from then on its machine code holds the addresses the symbols had. A
    kernel defined in a module that sets ``LINKS_BLAS = False`` (panels.py, which the
    tuner runs before binding) is not counted, wherever it is imported."""
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.startswith("charlstm.kernels") and module is not None:
            for obj in list(vars(module).values()):
                if isinstance(obj, CPUDispatcher) and obj.signatures:
                    home = sys.modules.get(obj.py_func.__module__)
                    if getattr(home, "LINKS_BLAS", True):
                        return True
    return False


class BlasBinding:
    """Which library serves each role in this process.

    One binding per process: LLVM's symbol table, which the kernels' machine code is
    linked against when it is compiled or loaded, is the process's own. ``bind`` may
    change it until the first kernel runs; after that it only accepts the same choice.
    """

    def __init__(self):
        self.spec: str | None = None
        self.libraries: dict[str, blas_libraries.Library] = {}
        self._stubs: dict = {}  # ctypes callbacks must outlive the symbols pointing at them

    def fixed_spec(self) -> str | None:
        """The choice this process can no longer change (its kernels are linked against
        it), or None while ``bind`` may still change it."""
        return self.spec if self.spec is not None and _kernels_linked() else None

    def bind(self, spec: str) -> None:
        """Point the kernels' products at ``spec``'s libraries.

        Raises ValueError for a malformed choice, LibraryUnavailable when a library is
        not installed, and RuntimeError when kernels already run on another choice."""
        step, chunk = parse_blas(spec)
        spec = format_blas(step, chunk)
        if spec == self.spec:
            return
        if self.spec is not None and _kernels_linked():
            raise RuntimeError(
                f"this process already runs its matrix products on {self.spec}; "
                f"a run on {spec} needs a process of its own")
        libraries = {"step": blas_libraries.load(step), "chunk": blas_libraries.load(chunk)}
        for role, lib in libraries.items():
            for name, address in lib.addresses.items():
                llvm.add_symbol(f"charlstm_{name}{_SYMBOL_SUFFIX[role]}", address)
        for kind in "sd":
            step_lib = libraries["step"]
            if step_lib.packs:
                address = step_lib.packed[f"{kind}gemm_compute"]
            else:
                stub = self._stubs.setdefault(kind, blas_libraries.unpacked_compute(kind))
                address = ctypes.cast(stub, ctypes.c_void_p).value
            llvm.add_symbol(f"charlstm_{kind}gemm_compute_step", address)
        self.spec, self.libraries = spec, libraries

    def bind_bf16_compute(self) -> None:
        """Point the bfloat16 step products' symbol at oneMKL's packed bfloat16 compute.
        Raises LibraryUnavailable without oneMKL (or an oneMKL without it)."""
        lib = blas_libraries.load("mkl")
        if not lib.has_bf16:
            raise LibraryUnavailable(f"{lib.describe()} has no bfloat16 GEMM; upgrade it "
                                     f"(pip install -U 'charlstm[mkl]')")
        llvm.add_symbol("charlstm_bf16_compute_step", lib.bf16["compute"])

    @property
    def step_packs(self) -> bool:
        """Whether the step library can pack weights (step weights "packed")."""
        return self.libraries["step"].packs

    def pack_step_weight(self, weight: np.ndarray, dest: np.ndarray, forward: bool,
                         rows: int) -> None:
        """Pack weight_hh [G*H, H] into ``dest`` (from ``packed_buffer``) as the B operand
        of a step product over ``rows`` rows: of ``h @ W.T`` if ``forward``, else of
        ``dpre @ W``. Raises RuntimeError if the step library cannot pack."""
        lib = self.libraries["step"]
        if not lib.packs:
            raise RuntimeError(f"{lib.name} cannot pack weights; step weights 'packed' need mkl")
        kind = "s" if weight.dtype == np.float32 else "d"
        GH, H = weight.shape
        n, k = (GH, H) if forward else (H, GH)
        pack = blas_libraries.PACK_PROTOTYPES[kind](lib.packed[f"{kind}gemm_pack"])
        real = ctypes.c_float if kind == "s" else ctypes.c_double
        pack(_ROW_MAJOR, blas_libraries.PACK_B, _TRANS if forward else _NO_TRANS, rows, n, k,
             real(1.0), weight.ctypes.data, H, dest.ctypes.data)

    def packed_buffer(self, weight_shape: tuple, dtype, forward: bool, rows: int) -> np.ndarray:
        """A [1, n] array, 64-byte aligned, large enough for ``pack_step_weight``."""
        lib = self.libraries["step"]
        kind = "s" if np.dtype(dtype) == np.float32 else "d"
        GH, H = weight_shape
        n, k = (GH, H) if forward else (H, GH)
        itemsize = np.dtype(dtype).itemsize
        count = -(-lib.pack_size(kind, rows, n, k) // itemsize)
        raw = np.empty(count + 64 // itemsize, dtype)
        offset = (-raw.ctypes.data % 64) // itemsize
        return raw[offset:offset + count].reshape(1, count)

    def describe(self) -> str:
        """E.g. 'step products: oneMKL 2026.2.0 (...); chunk products: OpenBLAS ...'."""
        step, chunk = self.libraries["step"], self.libraries["chunk"]
        if step is chunk:
            return f"{step.name}: {step.describe()}"
        return (f"step products {step.name}: {step.describe()}; "
                f"chunk products {chunk.name}: {chunk.describe()}")


def bind_at_start(binding: BlasBinding, environ=os.environ) -> None:
    """Bind the process's first choice: CHARLSTM_BLAS if set (a subprocess's way to choose
    before importing charlstm), else NumPy's OpenBLAS, else the numpy.dot callback.

    Raises UserError naming CHARLSTM_BLAS when its value is not a choice or its library
    cannot be loaded: a run asked for, say, mkl must not go on silently on another."""
    chosen = environ.get("CHARLSTM_BLAS")
    if not chosen:
        try:
            binding.bind(DEFAULT_BLAS)
        except LibraryUnavailable:
            binding.bind("numpy")
        return
    try:
        binding.bind(chosen)
    except ValueError as e:
        raise UserError(f"CHARLSTM_BLAS: {e}; correct it or unset it") from None
    except LibraryUnavailable as e:
        raise LibraryUnavailable(f"CHARLSTM_BLAS={chosen}: {e}, or unset CHARLSTM_BLAS") from None


BLAS = BlasBinding()
bind_at_start(BLAS)
BACKEND = BLAS.libraries["chunk"].name


class BlasThreads:
    """The number of threads each GEMM call uses, where it can be set (NumPy's OpenBLAS;
    oneMKL is loaded sequential and always computes on the calling thread).

    One setting for the whole process. Shards of a batch computed on separate cores set
    it to 1 while they run: two callers each splitting their products over both cores
    made the threads fight, and a step took twice as long (benchmarks/overlap_probe.py).
    """

    def __init__(self, binding: BlasBinding = BLAS):
        self._binding = binding

    def _openblas(self):
        for lib in self._binding.libraries.values():
            if lib.set_threads is not None:
                return lib
        return None

    @property
    def settable(self) -> bool:
        return self._openblas() is not None

    def get(self) -> int | None:
        lib = self._openblas()
        return lib.get_threads() if lib is not None else None

    def set(self, n: int) -> None:
        lib = self._openblas()
        if lib is not None:
            lib.set_threads(n)


BLAS_THREADS = BlasThreads()


def _signature(real):
    return types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                      real, types.voidptr, types.int64, types.voidptr, types.int64, real,
                      types.voidptr, types.int64)


def _gemv_signature(real):
    return types.void(types.int32, types.int32, types.int64, types.int64, real, types.voidptr,
                      types.int64, types.voidptr, types.int64, real, types.voidptr, types.int64)


def _externals(role):
    """The CBLAS functions of one role, as the symbols BlasBinding.bind points."""
    suffix = _SYMBOL_SUFFIX[role]
    return (types.ExternalFunction(f"charlstm_sgemm{suffix}", _signature(types.float32)),
            types.ExternalFunction(f"charlstm_dgemm{suffix}", _signature(types.float64)),
            types.ExternalFunction(f"charlstm_sgemv{suffix}", _gemv_signature(types.float32)),
            types.ExternalFunction(f"charlstm_dgemv{suffix}", _gemv_signature(types.float64)))


_sgemm, _dgemm, _sgemv, _dgemv = _externals("chunk")
_sgemm_step, _dgemm_step, _sgemv_step, _dgemv_step = _externals("step")


def _compute_signature(real):
    return types.void(types.int32, types.int32, types.int32, types.int64, types.int64,
                      types.int64, types.voidptr, types.int64, types.voidptr, types.int64, real,
                      types.voidptr, types.int64)


_scompute_step = types.ExternalFunction("charlstm_sgemm_compute_step",
                                        _compute_signature(types.float32))
_dcompute_step = types.ExternalFunction("charlstm_dgemm_compute_step",
                                        _compute_signature(types.float64))


def _gemv_impl(sgemv, dgemv):
    def typer(trans, m, n, a, lda, x, beta, y):
        if a.dtype == types.float32:
            def impl(trans, m, n, a, lda, x, beta, y):
                sgemv(_ROW_MAJOR, trans, m, n, np.float32(1.0), a.ctypes.data, lda,
                      x.ctypes.data, 1, np.float32(beta), y.ctypes.data, 1)
            return impl

        def impl(trans, m, n, a, lda, x, beta, y):
            dgemv(_ROW_MAJOR, trans, m, n, 1.0, a.ctypes.data, lda, x.ctypes.data, 1,
                  float(beta), y.ctypes.data, 1)
        return impl
    return typer


def _gemm_impl(sgemm, dgemm):
    def typer(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
        for arr in (a, b, c):
            if not isinstance(arr, types.Array) or arr.layout != "C":
                raise TypingError("charlstm gemm needs C-contiguous arrays")
        if a.dtype == b.dtype == c.dtype == types.float32:
            def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
                sgemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, np.float32(1.0), a.ctypes.data,
                      lda, b.ctypes.data, ldb, np.float32(beta), c.ctypes.data, ldc)
            return impl
        if a.dtype == b.dtype == c.dtype == types.float64:
            def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
                dgemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, lda,
                      b.ctypes.data, ldb, float(beta), c.ctypes.data, ldc)
            return impl
        raise TypingError("charlstm gemm needs float32 or float64 arrays of one dtype")
    return typer


def _gemv(trans, m, n, a, lda, x, beta, y):
    """CBLAS row-major gemv on the chunk library: y = op(a) @ x + beta * y; compiled only."""
    raise NotImplementedError


def _gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """CBLAS row-major gemm on the chunk library: c = op(a) @ op(b) + beta * c; compiled only."""
    raise NotImplementedError


def _gemv_step(trans, m, n, a, lda, x, beta, y):
    """As _gemv, on the step library."""
    raise NotImplementedError


def _gemm_step(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """As _gemm, on the step library."""
    raise NotImplementedError


def _compute_step(m, n, k, a, packed_b, c):
    """c = a @ B for a [m, k] and B packed by BlasBinding.pack_step_weight; the step
    library's cblas_?gemm_compute; compiled only."""
    raise NotImplementedError


@overload(_compute_step, inline="always")
def _compute_step_impl(m, n, k, a, packed_b, c):
    if a.dtype == types.float32:
        def impl(m, n, k, a, packed_b, c):
            _scompute_step(_ROW_MAJOR, _NO_TRANS, _PACKED_STORAGE, m, n, k, a.ctypes.data, k,
                           packed_b.ctypes.data, n, np.float32(0.0), c.ctypes.data, n)
        return impl

    def impl(m, n, k, a, packed_b, c):
        _dcompute_step(_ROW_MAJOR, _NO_TRANS, _PACKED_STORAGE, m, n, k, a.ctypes.data, k,
                       packed_b.ctypes.data, n, 0.0, c.ctypes.data, n)
    return impl


overload(_gemv, inline="always")(_gemv_impl(_sgemv, _dgemv))
overload(_gemm, inline="always")(_gemm_impl(_sgemm, _dgemm))
overload(_gemv_step, inline="always")(_gemv_impl(_sgemv_step, _dgemv_step))
overload(_gemm_step, inline="always")(_gemm_impl(_sgemm_step, _dgemm_step))


# One row: gemv streams b once; OpenBLAS's gemm ran this 2-3x slower.

@kernel(inline="always")
def gemm_nn(a, b, out, beta=0.0):
    """out = a @ b + beta * out; a [m, k], b [k, n], out [m, n]. A chunk product."""
    m, k = a.shape
    n = b.shape[1]
    if m == 1:
        _gemv(_TRANS, k, n, b, n, a, beta, out)
    else:
        _gemm(_NO_TRANS, _NO_TRANS, m, n, k, a, k, b, n, beta, out, n)


@kernel(inline="always")
def gemm_nt(a, b, out, beta=0.0):
    """out = a @ b.T + beta * out; a [m, k], b [n, k], out [m, n]. A chunk product."""
    m, k = a.shape
    n = b.shape[0]
    if m == 1:
        _gemv(_NO_TRANS, n, k, b, k, a, beta, out)
    else:
        _gemm(_NO_TRANS, _TRANS, m, n, k, a, k, b, k, beta, out, n)


@kernel(inline="always")
def gemm_tn(a, b, out, beta=0.0):
    """out = a.T @ b + beta * out; a [k, m], b [k, n], out [m, n]. A chunk product."""
    k, m = a.shape
    n = b.shape[1]
    _gemm(_TRANS, _NO_TRANS, m, n, k, a, m, b, n, beta, out, n)


@kernel(inline="always")
def step_nn(a, b, out, beta=0.0):
    """As gemm_nn, for the per-time-step products of a recurrence (the step library);
    ``b`` may have padding columns past out's width (see TRANSPOSED_PAD)."""
    m, k = a.shape
    n = out.shape[1]
    ldb = b.shape[1]
    if m == 1:
        _gemv_step(_TRANS, k, n, b, ldb, a, beta, out)
    else:
        _gemm_step(_NO_TRANS, _NO_TRANS, m, n, k, a, k, b, ldb, beta, out, n)


@kernel(inline="always")
def step_nt(a, b, out, beta=0.0):
    """As gemm_nt, for the per-time-step products of a recurrence (the step library);
    ``b`` may have padding columns past a's width (see TRANSPOSED_PAD)."""
    m, k = a.shape
    n = b.shape[0]
    ldb = b.shape[1]
    if m == 1:
        _gemv_step(_NO_TRANS, n, k, b, ldb, a, beta, out)
    else:
        _gemm_step(_NO_TRANS, _TRANS, m, n, k, a, k, b, ldb, beta, out, n)


@kernel(inline="always")
def _float_step_forward(h, weight, out, layout):
    if layout == _PANELS:
        panel_product(h, weight, out)
    elif layout == _TRANSPOSED:
        step_nn(h, weight, out)
    elif layout == _PACKED:
        _compute_step(h.shape[0], out.shape[1], h.shape[1], h, weight, out)
    else:
        step_nt(h, weight, out)


@kernel(inline="always")
def _float_step_backward(dpre, weight, out, layout):
    if layout == _PANELS:
        panel_product(dpre, weight, out)
    elif layout == _TRANSPOSED:
        step_nt(dpre, weight, out)
    elif layout == _PACKED:
        _compute_step(dpre.shape[0], out.shape[1], dpre.shape[1], dpre, weight, out)
    else:
        step_nn(dpre, weight, out)


def recurrent_forward(h, weight, out, layout):
    """out = h @ W_hh.T, one time step's recurrent product; compiled only.

    ``weight`` is the copy of W_hh that ``layout`` (STEP_LAYOUTS) names: as stored ([n, k],
    PyTorch's layout), a [k, n + TRANSPOSED_PAD] copy of its transpose, packed by the
    step library, or W_hh.T packed into panels (panels.pack_panels) for charlstm's own
    product.
    Which one multiplies fastest depends on the library and the CPU (OpenBLAS's AVX-512
    kernels took 14-19 us with the transposed copy against 31-35 us as stored for
    [16, 128] rows at S, and 61-67 against 134-147 us at M, on an AMD EPYC Zen 5:
    benchmarks/blas_choice.py), so it is measured, not assumed (charlstm/tune.py).

    With bfloat16 products (a run's precision), ``weight`` is the tuple
    (panels, a_pairs, scratch) of bf16.bf16_step_product: W_hh.T rounded and packed once
    per chunk, and the buffers h is rounded into; ``layout`` is then not read. The choice
    is made by type when the calling kernel compiles, so a float32 run never compiles the
    bfloat16 instructions, which a CPU without AVX512_BF16 cannot run.
    """
    raise NotImplementedError


def recurrent_backward(dpre, weight, out, layout):
    """out = dpre @ W_hh, one time step's gradient through the recurrent product; compiled
    only. ``weight`` and ``layout`` as in ``recurrent_forward``, but panels pack W_hh
    itself."""
    raise NotImplementedError


# oneMKL's cblas_gemm_bf16bf16f32_compute, for bfloat16 step products on a weight it
# packed (BlasBinding.bind_bf16_compute points the symbol at it before such a product
# compiles).
_bf16_compute_step = types.ExternalFunction(
    "charlstm_bf16_compute_step",
    types.void(types.int32, types.int64, types.int64, types.int64, types.int64, types.int64,
               types.float32, types.voidptr, types.int64, types.voidptr, types.int64,
               types.float32, types.voidptr, types.int64))


def _step_product_overload(float_version):
    def typer(h, weight, out, layout):
        if isinstance(weight, types.BaseTuple) and len(weight) == 4:
            # (packed by oneMKL, a_pairs, scratch, 0): round h, then MKL's compute.
            def mkl_low_precision(h, weight, out, layout):
                round_rows(h, weight[1])
                m, k = h.shape
                n = out.shape[1]
                _bf16_compute_step(_ROW_MAJOR, _NO_TRANS, _PACKED_STORAGE, m, n, k,
                                   np.float32(1.0), weight[1].ctypes.data, 2 * weight[1].shape[1],
                                   weight[0].ctypes.data, n, np.float32(0.0), out.ctypes.data, n)
            return mkl_low_precision
        if isinstance(weight, types.BaseTuple):
            def low_precision(h, weight, out, layout):
                bf16_step_product(h, weight[1], weight[0], out, weight[2])
            return low_precision

        def full_precision(h, weight, out, layout):
            float_version(h, weight, out, layout)
        return full_precision
    return typer


overload(recurrent_forward, inline="always")(_step_product_overload(_float_step_forward))
overload(recurrent_backward, inline="always")(_step_product_overload(_float_step_backward))


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


@kernel
def transpose_into(src, dst):
    """dst = src.T for src [n, k] and dst [k, n], in 32 x 32 tiles so both sides are read
    and written a cache line at a time (NumPy's strided copy took 2.7 ms for L's
    [2048, 512] weight_hh; see Network's transposed step weights)."""
    n, k = src.shape
    tile = 32
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(0, k, tile):
            j1 = min(j0 + tile, k)
            for j in range(j0, j1):
                row = dst[j]
                for i in range(i0, i1):
                    row[i] = src[i, j]

