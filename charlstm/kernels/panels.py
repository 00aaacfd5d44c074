"""charlstm's own product for the per-time-step products of a recurrence.

A recurrence multiplies a few rows ([B/shards, H] at a time) by the same weight_hh T
times per chunk. A BLAS call re-packs the weight into its kernel's layout on every one
of those calls and, at these shapes, runs well below the core's peak: OpenBLAS's
AVX-512 kernels took 65 us for M's [16, 256] x [256, 1024] forward product and 80 us
for its [16, 1024] x [1024, 256] backward twin on an AMD EPYC Zen 5, where the chunk
products reach about 210 GFLOP/s. Here the weight is packed once per chunk and
direction into column panels, and every step product runs a register-blocked kernel
over them: on the same machine 34 us for either product, about 245 GFLOP/s
(benchmarks/blas_choice.py, the "panels" rows).

Layout: the right operand ``B`` ([K, N]) is cut into panels of ``PANEL_WIDTH`` columns
(the last one zero-padded); panel p is stored as a [K, PANEL_WIDTH] block, rows k
contiguous, at rows [p*K, (p+1)*K) of a 2-D array. The kernel holds a block of
``ROW_BLOCK`` x PANEL_WIDTH results in vector registers while it walks k: per k one load
of the panel's row, one broadcast of each row's ``a[i, k]`` and one fused multiply-add
per row (the micro-kernel design of BLIS and GotoBLAS: Goto and van de Geijn, "Anatomy
of High-Performance Matrix Multiplication", ACM TOMS 34(3), 2008).

The block is written in LLVM IR (numba.extending.intrinsic) with vector types of
PANEL_WIDTH lanes, which LLVM splits into the CPU's registers: two AVX-512 registers or
four AVX2 ones per row. Each result is one chain of fused multiply-adds over k in order
0..K-1, rounded the same way on every CPU whatever its vector width.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

import numpy as np

from .jit import kernel

# Nothing here calls a BLAS, so the tuner may time these kernels before the process binds
# its library (blas._kernels_linked).
LINKS_BLAS = False
PANEL_WIDTH = 32  # columns per panel: two AVX-512 vectors of float32
ROW_BLOCK = 8  # rows per register block: 8 x 2 accumulators leave room for the operands


def panel_count(n: int) -> int:
    """Panels that hold ``n`` columns."""
    return -(-n // PANEL_WIDTH)


def panel_buffer(k: int, n: int, dtype, count: int | None = None) -> np.ndarray:
    """An uninitialised [panel_count(n) * k, PANEL_WIDTH] array, 64-byte aligned, for the
    panels of a [k, n] right operand; with ``count``, ``count`` of them stacked
    ([count, panel_count(n) * k, PANEL_WIDTH], each aligned)."""
    rows = panel_count(n) * k
    itemsize = np.dtype(dtype).itemsize
    size = (count or 1) * rows * PANEL_WIDTH
    raw = np.empty(size + 64 // itemsize, dtype)
    offset = (-raw.ctypes.data % 64) // itemsize
    flat = raw[offset:offset + size]
    return flat.reshape(rows, PANEL_WIDTH) if count is None else flat.reshape(count, rows, PANEL_WIDTH)


def _register_block(rows: int, panels_at_once: int = 1):
    """An intrinsic computing c[i, j*PANEL_WIDTH:(j+1)*PANEL_WIDTH] = a[i, :K] @ panel j
    for ``rows`` rows and ``panels_at_once`` consecutive panels j.

    Arguments: a, a_offset, lda, panels, panel_offset, c, c_offset, ldc, K (offsets and
    leading dimensions in elements; K >= 1; panel j starts j*K*PANEL_WIDTH elements after
    panel_offset). Writes all PANEL_WIDTH columns of each row and panel. Each result is
    the same chain of fused multiply-adds whatever the block's shape.
    """
    width = PANEL_WIDTH

    @intrinsic
    def block(typingctx, a, a_offset, lda, panels, panel_offset, c, c_offset, ldc, K):
        for arr in (a, panels, c):
            if not isinstance(arr, types.Array) or arr.layout != "C":
                raise TypingError("the panel product needs C-contiguous arrays")
        if not (a.dtype == panels.dtype == c.dtype) or a.dtype not in (types.float32,
                                                                      types.float64):
            raise TypingError("the panel product needs float32 or float64 arrays of one dtype")
        sig = types.void(a, types.intp, types.intp, panels, types.intp, c, types.intp,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_, a_off, lda_, p_, p_off, c_, c_off, ldc_, k_count = args
            element = context.get_value_type(signature.args[0].dtype)
            vector = ir.VectorType(element, width)
            suffix = "f32" if signature.args[0].dtype == types.float32 else "f64"
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector] * 3),
                f"llvm.fma.v{width}{suffix}")
            data = [context.make_array(signature.args[i])(context, builder, args[i]).data
                    for i in (0, 3, 5)]
            i64 = ir.IntType(64)
            a_ptr = builder.gep(data[0], [a_off])
            panel_stride = builder.mul(k_count, ir.Constant(i64, width))
            panel_ptrs = [builder.gep(data[1], [builder.add(
                p_off, builder.mul(ir.Constant(i64, j), panel_stride))])
                for j in range(panels_at_once)]
            c_ptr = builder.gep(data[2], [c_off])
            zero = ir.Constant(vector, None)
            undef = ir.Constant(vector, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            lane0 = ir.Constant(ir.IntType(32), 0)
            row_starts = [builder.gep(a_ptr, [builder.mul(ir.Constant(i64, r), lda_)])
                          for r in range(rows)]
            cells = [(r, j) for r in range(rows) for j in range(panels_at_once)]
            entry = builder.block
            loop = builder.append_basic_block("panel.k")
            done = builder.append_basic_block("panel.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            accumulators = {}
            for cell in cells:
                acc = builder.phi(vector)
                acc.add_incoming(zero, entry)
                accumulators[cell] = acc
            offset = builder.mul(k, ir.Constant(i64, width))
            b_rows = [builder.load(builder.bitcast(builder.gep(ptr, [offset]),
                                                   vector.as_pointer()), align=4)
                      for ptr in panel_ptrs]
            updated = {}
            for r in range(rows):
                a_rk = builder.load(builder.gep(row_starts[r], [k]))
                broadcast = builder.shuffle_vector(
                    builder.insert_element(undef, a_rk, lane0), undef, splat)
                for j in range(panels_at_once):
                    updated[r, j] = builder.call(fma, [broadcast, b_rows[j],
                                                       accumulators[r, j]])
            k_next = builder.add(k, ir.Constant(i64, 1))
            tail = builder.block
            k.add_incoming(k_next, tail)
            for cell in cells:
                accumulators[cell].add_incoming(updated[cell], tail)
            builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)
            builder.position_at_end(done)
            for r, j in cells:
                out = builder.gep(c_ptr, [builder.add(builder.mul(ir.Constant(i64, r), ldc_),
                                                      ir.Constant(i64, j * width))])
                builder.store(updated[r, j], builder.bitcast(out, vector.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


# One intrinsic per row count: a block of ROW_BLOCK rows, then 4, 2 and 1 for the rest.
_block8 = _register_block(8)
_block4 = _register_block(4)
_block2 = _register_block(2)
_block1 = _register_block(1)
# One row (batch-1 sampling, evaluation): a single panel's two accumulators would wait on
# each fused multiply-add's latency, so four panels are walked at once.
WIDE_PANELS = 4
_block1_wide = _register_block(1, WIDE_PANELS)


@kernel(inline="always")
def _rows_of_panel(a, row, rows, k, panels, panel_offset, c, c_offset, ldc):
    """One panel's columns for ``rows`` rows of a from ``row`` on (rows <= ROW_BLOCK)."""
    if rows == 8:
        _block8(a, row * k, k, panels, panel_offset, c, c_offset, ldc, k)
        return
    if rows >= 4:
        _block4(a, row * k, k, panels, panel_offset, c, c_offset, ldc, k)
        row, rows, c_offset = row + 4, rows - 4, c_offset + 4 * ldc
    if rows >= 2:
        _block2(a, row * k, k, panels, panel_offset, c, c_offset, ldc, k)
        row, rows, c_offset = row + 2, rows - 2, c_offset + 2 * ldc
    if rows == 1:
        _block1(a, row * k, k, panels, panel_offset, c, c_offset, ldc, k)


@kernel
def panel_product(a, panels, out):
    """out = a @ B for B packed into ``panels`` by ``pack_panels``.

    a : [m, k] C-contiguous; panels : [panel_count(n) * k, PANEL_WIDTH]; out : [m, n],
    C-contiguous, overwritten. Raises nothing; the caller keeps the shapes consistent.

    Called, not inlined: inlined into every cell kernel that can use it, it made a cold
    start (`python -m charlstm.tools.bench --worker jit`) take 25 s instead of 16.5 s, and
    whole training steps ran no faster (AMD EPYC Zen 5).
    """
    m, k = a.shape
    n = out.shape[1]
    width = PANEL_WIDTH
    full = n // width
    done = 0  # panels already computed
    if m == 1:
        while done + WIDE_PANELS <= full:
            _block1_wide(a, 0, k, panels, done * k * width, out, done * width, n, k)
            done += WIDE_PANELS
    for p in range(done, full):
        for row in range(0, m, ROW_BLOCK):
            rows = min(ROW_BLOCK, m - row)
            _rows_of_panel(a, row, rows, k, panels, p * k * width, out, row * n + p * width, n)
    if full * width < n:  # the last panel's columns past n go to a scratch block
        scratch = np.empty((ROW_BLOCK, width), out.dtype)
        used = n - full * width
        for row in range(0, m, ROW_BLOCK):
            rows = min(ROW_BLOCK, m - row)
            _rows_of_panel(a, row, rows, k, panels, full * k * width, scratch, 0, width)
            for i in range(rows):
                for j in range(used):
                    out[row + i, full * width + j] = scratch[i, j]


@kernel
def pack_panels(weight, panels, transpose):
    """Pack the right operand B of ``a @ B`` into panels (see the module docstring).

    weight : [n, k] with ``transpose`` (B = weight.T, the forward's ``h @ W_hh.T``) or
    [k, n] without (B = weight, the backward's ``dpre @ W_hh``).
    panels : [panel_count(n) * k, PANEL_WIDTH] (``panel_buffer``), overwritten; the
    columns past n are zero.
    """
    width = PANEL_WIDTH
    if transpose:
        n, k = weight.shape
    else:
        k, n = weight.shape
    for p in range((n + width - 1) // width):
        n0 = p * width
        used = min(width, n - n0)
        block = panels[p * k:(p + 1) * k]
        if transpose:
            # Row j of weight is column n0 + j of B: read it along k, write down a column.
            for j in range(used):
                src = weight[n0 + j]
                for kk in range(k):
                    block[kk, j] = src[kk]
        else:
            for kk in range(k):
                src = weight[kk]
                dst = block[kk]
                for j in range(used):
                    dst[j] = src[n0 + j]
        for kk in range(k):
            for j in range(used, width):
                block[kk, j] = 0.0


@kernel
def repeated_panel_product(a, panels, out, times):
    """``panel_product`` ``times`` times in one compiled call: how the tuner (tune.py) and
    the benchmarks time a step product without Python's call overhead in the figure."""
    for _ in range(times):
        panel_product(a, panels, out)
