"""Matrix products with bfloat16 operands and float32 accumulation.

bfloat16 keeps float32's 8-bit exponent and the top 8 bits of its significand, so a
float32 becomes one by rounding off its low 16 bits (to nearest, ties to even). CPUs with
AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later) have
VDPBF16PS: for each of 16 float32 lanes, ``acc += a0*b0 + a1*b1`` over a pair of bfloat16
from each operand, twice the multiplies of a float32 FMA per instruction. This is how the
mixed-precision papers train (Micikevicius et al., "Mixed Precision Training", ICLR 2018;
Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019): low-precision
operands for the matrix products only, float32 accumulation and everything else float32.

Layout. Operands are stored as *pairs*: a uint32 holds two bfloat16, element 2p in its low
half and 2p+1 in its high half, the order VDPBF16PS reads them. The left operand ``a``
([m, k]) is a [m, ceil(k/2)] uint32 array of pairs along k; the right operand ``B`` ([k, n])
is cut into panels of PANEL_WIDTH columns like panels.py's, panel j stored as
[ceil(k/2), PANEL_WIDTH] uint32 whose entry [p, c] pairs B[2p, c] and B[2p+1, c]. An odd k
is padded with a zero. The register block holds ROW_BLOCK x PANEL_WIDTH float32 results
(two 16-lane vectors a row) and, per pair p, loads the panel's row once, broadcasts each
row's pair of ``a`` and issues one VDPBF16PS per vector (the BLIS micro-kernel design, as
in panels.py).

Each result is one chain of VDPBF16PS over the pairs in order 0..ceil(k/2)-1. Within an
instruction the two products are exact in float32 (8-bit by 8-bit significands), and the
two additions round to float32; Intel's manual adds the odd element's product first, and
input and output denormals are flushed to zero. The tests' twin (tests/reference.py)
rounds the same operands and multiplies in float64; the two agree to float32 accumulation
error, which the tests bound.

The intrinsic exists only on CPUs with AVX512_BF16: these kernels are compiled the first
time they are called, and charlstm calls them only where ``cpu.bf16_products()`` says
the CPU has the instruction (elsewhere ``--precision bfloat16`` is refused).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .jit import kernel

# Nothing here calls a BLAS (see blas._kernels_linked).
LINKS_BLAS = False
PANEL_WIDTH = 32  # columns per panel: two 16-lane float32 accumulators a row
ROW_BLOCK = 8  # rows per register block: 8 x 2 accumulators, as in panels.py
LANES = 16


class _BFloat16(ir.Type):
    """LLVM's ``bfloat`` type, which llvmlite's IR builder does not name."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat16)

    def __hash__(self):
        return hash("bfloat")


def pair_count(k: int) -> int:
    """Pairs that hold ``k`` bfloat16 values (the last one zero-padded if k is odd)."""
    return (k + 1) // 2


def panel_count(n: int) -> int:
    """Panels that hold ``n`` columns."""
    return -(-n // PANEL_WIDTH)


def panel_buffer(k: int, n: int) -> np.ndarray:
    """An uninitialised [panel_count(n) * pair_count(k), PANEL_WIDTH] uint32 array,
    64-byte aligned, for the bfloat16 panels of a [k, n] right operand."""
    rows = panel_count(n) * pair_count(k)
    size = rows * PANEL_WIDTH
    raw = np.empty(size + 16, np.uint32)
    offset = (-raw.ctypes.data % 64) // 4
    return raw[offset:offset + size].reshape(rows, PANEL_WIDTH)


def pair_buffer(m: int, k: int) -> np.ndarray:
    """An uninitialised [m, pair_count(k)] uint32 array for a left operand [m, k]."""
    return np.empty((m, pair_count(k)), np.uint32)


def result_scratch() -> np.ndarray:
    """The [ROW_BLOCK, PANEL_WIDTH] float32 scratch a product needs for a partial panel
    or a transposed result."""
    return np.empty((ROW_BLOCK, PANEL_WIDTH), np.float32)


@kernel(inline="always")
def _rounded_high(bits):
    """The float32 whose bit pattern is ``bits`` (a uint64 holding a uint32) rounded to
    the nearest bfloat16, ties to even, left in bits 16-31 (bits 0-15 zero): what
    VCVTNEPS2BF16 computes, but for denormals, which it flushes to zero. A NaN stays a
    quiet NaN; values beyond bfloat16's range round to infinity, as in float32. Written
    branch-free on 64-bit integers so LLVM vectorises the loops that call it."""
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
    nan = (bits & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)
    return ((bits & np.uint64(0xFFFF0000)) | np.uint64(0x400000)) if nan else rounded


@kernel(inline="always")
def bf16_pair(lo, hi):
    """Two float32 bit patterns (uint32) rounded to bfloat16 and paired in one uint32:
    ``lo``'s in bits 0-15, ``hi``'s in bits 16-31."""
    return np.uint32((_rounded_high(np.uint64(lo)) >> np.uint64(16))
                     | _rounded_high(np.uint64(hi)))


@kernel
def round_rows(src, dst):
    """Round ``src`` [m, k] (float32) to bfloat16 pairs along k: dst [m, pair_count(k)]
    (uint32) gets (src[i, 2p], src[i, 2p+1]) at [i, p], the last high half zero if k is
    odd. The left operand of a product in the "rows" layout."""
    m, k = src.shape
    half = k // 2
    for i in range(m):
        bits = src[i].view(np.uint32)
        row = dst[i]
        for p in range(half):
            row[p] = bf16_pair(bits[2 * p], bits[2 * p + 1])
        if k % 2:
            row[half] = bf16_pair(bits[k - 1], np.uint32(0))


@kernel
def interleave_rows(first, rest, dst):
    """Round the [k, m] matrix X whose rows are ``first``'s then ``rest``'s (float32,
    [k1, m] and [k - k1, m]) to bfloat16 and pair consecutive rows: dst [pair_count(k), m]
    (uint32) gets (X[2p, i], X[2p+1, i]) at [p, i] (the last high halves zero if k is
    odd). This is X.T as the left operand of a product in the "interleaved" layout: row i
    of X.T reads dst[:, i]. Two sources, so that the rows of h_{t-1} over a chunk (h0,
    then h_0 .. h_{T-2}) need no copy."""
    k1, m = first.shape
    k = k1 + rest.shape[0]
    first_bits, rest_bits = first.view(np.uint32), rest.view(np.uint32)
    zero = np.uint32(0)
    for p in range((k + 1) // 2):
        r0, r1 = 2 * p, 2 * p + 1
        lo = first_bits[r0] if r0 < k1 else rest_bits[r0 - k1]
        out = dst[p]
        if r1 < k:
            hi = first_bits[r1] if r1 < k1 else rest_bits[r1 - k1]
            for i in range(m):
                out[i] = bf16_pair(lo[i], hi[i])
        else:
            for i in range(m):
                out[i] = bf16_pair(lo[i], zero)


@kernel
def pack_panels(weight, panels, transpose):
    """Round the right operand B of ``a @ B`` to bfloat16 and pack it into panels (see
    the module docstring).

    weight : float32 [n, k] with ``transpose`` (B = weight.T: the forward's ``h @ W.T``),
        or [k, n] without (B = weight).
    panels : uint32 [panel_count(n) * pair_count(k), PANEL_WIDTH] (``panel_buffer``),
        overwritten; columns past n and the pad of an odd k are zero.

    With ``transpose`` a panel's 32 rows of weight are first rounded into pairs, along
    their rows, then turned into the panel's columns: rounding and transposing in one
    loop measured 4x slower.
    """
    width = PANEL_WIDTH
    if transpose:
        n, k = weight.shape
    else:
        k, n = weight.shape
    pairs = (k + 1) // 2
    half = k // 2
    bits = weight.view(np.uint32)
    zero = np.uint32(0)
    rounded = np.empty((width, pairs), np.uint32) if transpose else np.empty((0, 0), np.uint32)
    for q in range((n + width - 1) // width):
        n0 = q * width
        used = min(width, n - n0)
        block = panels[q * pairs:(q + 1) * pairs]
        if transpose:
            rounded[...] = 0
            for j in range(used):
                src = bits[n0 + j]
                row = rounded[j]
                for p in range(half):
                    row[p] = bf16_pair(src[2 * p], src[2 * p + 1])
                if k % 2:
                    row[half] = bf16_pair(src[k - 1], zero)
            for p in range(pairs):
                dst = block[p]
                for j in range(width):
                    dst[j] = rounded[j, p]
        else:
            for p in range(pairs):
                lo = bits[2 * p]
                dst = block[p]
                if 2 * p + 1 < k:
                    hi = bits[2 * p + 1]
                    for j in range(used):
                        dst[j] = bf16_pair(lo[n0 + j], hi[n0 + j])
                else:
                    for j in range(used):
                        dst[j] = bf16_pair(lo[n0 + j], zero)
                for j in range(used, width):
                    dst[j] = 0


def _register_block(rows: int):
    """An intrinsic computing c[i, 0:PANEL_WIDTH] = A[i, :] @ panel for ``rows`` rows:
    a chain of VDPBF16PS over the pairs, float32 accumulators in registers.

    Arguments: a (uint32 pairs), a_offset, row_stride, pair_stride, panels (uint32),
    panel_offset, c (float32), c_offset, ldc, pairs. Row r's pair p of A is at a_offset +
    r * row_stride + p * pair_stride (elements): (pairs, 1) for the "rows" layout, (1,
    m) for the "interleaved" one. pairs >= 1. Writes all PANEL_WIDTH columns of each row.
    """
    vectors = PANEL_WIDTH // LANES

    @intrinsic
    def block(typingctx, a, a_offset, row_stride, pair_stride, panels, panel_offset, c,
              c_offset, ldc, pairs):
        for arr in (a, panels, c):
            if not isinstance(arr, types.Array) or arr.layout != "C":
                raise TypingError("the bfloat16 product needs C-contiguous arrays")
        if a.dtype != types.uint32 or panels.dtype != types.uint32 or c.dtype != types.float32:
            raise TypingError("the bfloat16 product needs uint32 pairs and a float32 result")
        sig = types.void(a, types.intp, types.intp, types.intp, panels, types.intp, c,
                         types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_, a_off, row_stride_, pair_stride_, p_, p_off, c_, c_off, ldc_, pair_count_ = args
            i32, i64 = ir.IntType(32), ir.IntType(64)
            floats = ir.VectorType(ir.FloatType(), LANES)
            words = ir.VectorType(i32, LANES)
            halves = ir.VectorType(_BFloat16(), 2 * LANES)
            dot = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(floats, [floats, halves, halves]),
                "llvm.x86.avx512bf16.dpbf16ps.512")
            data = [context.make_array(signature.args[i])(context, builder, args[i]).data
                    for i in (0, 4, 6)]
            a_ptr = builder.gep(data[0], [a_off])
            panel_ptr = builder.gep(data[1], [p_off])
            c_ptr = builder.gep(data[2], [c_off])
            zero = ir.Constant(floats, None)
            undef = ir.Constant(words, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
            lane0 = ir.Constant(i32, 0)
            row_starts = [builder.gep(a_ptr, [builder.mul(ir.Constant(i64, r), row_stride_)])
                          for r in range(rows)]
            cells = [(r, v) for r in range(rows) for v in range(vectors)]
            entry = builder.block
            loop = builder.append_basic_block("bf16.pair")
            done = builder.append_basic_block("bf16.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            p = builder.phi(i64)
            p.add_incoming(ir.Constant(i64, 0), entry)
            accumulators = {}
            for cell in cells:
                acc = builder.phi(floats)
                acc.add_incoming(zero, entry)
                accumulators[cell] = acc
            panel_row = builder.mul(p, ir.Constant(i64, PANEL_WIDTH))
            a_step = builder.mul(p, pair_stride_)
            b_vectors = [builder.bitcast(builder.load(builder.bitcast(
                builder.gep(panel_ptr, [builder.add(panel_row, ir.Constant(i64, v * LANES))]),
                words.as_pointer()), align=4), halves) for v in range(vectors)]
            updated = {}
            for r in range(rows):
                pair = builder.load(builder.gep(row_starts[r], [a_step]))
                broadcast = builder.bitcast(builder.shuffle_vector(
                    builder.insert_element(undef, pair, lane0), undef, splat), halves)
                for v in range(vectors):
                    updated[r, v] = builder.call(dot, [accumulators[r, v], broadcast,
                                                       b_vectors[v]])
            p_next = builder.add(p, ir.Constant(i64, 1))
            tail = builder.block
            p.add_incoming(p_next, tail)
            for cell in cells:
                accumulators[cell].add_incoming(updated[cell], tail)
            builder.cbranch(builder.icmp_signed("<", p_next, pair_count_), loop, done)
            builder.position_at_end(done)
            for r, v in cells:
                out = builder.gep(c_ptr, [builder.add(builder.mul(ir.Constant(i64, r), ldc_),
                                                      ir.Constant(i64, v * LANES))])
                builder.store(updated[r, v], builder.bitcast(out, floats.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


_block8 = _register_block(8)
_block4 = _register_block(4)
_block2 = _register_block(2)
_block1 = _register_block(1)


@kernel(inline="always")
def _rows_of_panel(a, row, rows, row_stride, pair_stride, pairs, panels, panel_offset, c,
                   c_offset, ldc):
    """One panel's columns for ``rows`` rows of A from ``row`` on (rows <= ROW_BLOCK)."""
    if rows == 8:
        _block8(a, row * row_stride, row_stride, pair_stride, panels, panel_offset, c,
                c_offset, ldc, pairs)
        return
    if rows >= 4:
        _block4(a, row * row_stride, row_stride, pair_stride, panels, panel_offset, c,
                c_offset, ldc, pairs)
        row, rows, c_offset = row + 4, rows - 4, c_offset + 4 * ldc
    if rows >= 2:
        _block2(a, row * row_stride, row_stride, pair_stride, panels, panel_offset, c,
                c_offset, ldc, pairs)
        row, rows, c_offset = row + 2, rows - 2, c_offset + 2 * ldc
    if rows == 1:
        _block1(a, row * row_stride, row_stride, pair_stride, panels, panel_offset, c,
                c_offset, ldc, pairs)


@kernel
def bf16_product(a, interleaved, panels, out, scratch, transpose_out):
    """out = A @ B (or its transpose) with bfloat16 operands and float32 accumulation.

    a : uint32, A [m, k]'s bfloat16 pairs: [m, pair_count(k)] from ``round_rows``, or with
        ``interleaved`` [pair_count(k), m] from ``interleave_rows`` (A = X.T of a [k, m] X).
    panels : uint32, B [k, n] packed by ``pack_panels``.
    scratch : float32 [ROW_BLOCK, PANEL_WIDTH] (``result_scratch``).
    out : float32 [m, n], or [n, m] with ``transpose_out`` (out = (A @ B).T), overwritten.

    A weight gradient dW = dpre.T @ h is computed as (h.T @ dpre).T: h.T interleaved, dpre
    packed along its rows and the result stored transposed, so that neither long operand
    is ever transposed in memory. Raises nothing; the caller keeps the shapes consistent.
    Called, not inlined, as panels.panel_product is.
    """
    if interleaved:
        pairs, m = a.shape
        row_stride, pair_stride = 1, m
    else:
        m, pairs = a.shape
        row_stride, pair_stride = pairs, 1
    n = out.shape[0] if transpose_out else out.shape[1]
    width = PANEL_WIDTH
    for q in range((n + width - 1) // width):
        n0 = q * width
        used = min(width, n - n0)
        direct = used == width and not transpose_out
        for row in range(0, m, ROW_BLOCK):
            rows = min(ROW_BLOCK, m - row)
            if direct:
                _rows_of_panel(a, row, rows, row_stride, pair_stride, pairs, panels,
                               q * pairs * width, out, row * n + n0, n)
                continue
            _rows_of_panel(a, row, rows, row_stride, pair_stride, pairs, panels,
                           q * pairs * width, scratch, 0, width)
            if transpose_out:
                for j in range(used):
                    dst = out[n0 + j]
                    for i in range(rows):
                        dst[row + i] = scratch[i, j]
            else:
                for i in range(rows):
                    dst = out[row + i]
                    for j in range(used):
                        dst[n0 + j] = scratch[i, j]


@kernel
def bf16_step_product(a, a_pairs, panels, out, scratch):
    """out = a @ B for a float32 ``a`` [m, k], rounded into ``a_pairs`` ([m,
    pair_count(k)]) first: one time step's recurrent product (blas.recurrent_forward and
    recurrent_backward, when the run's precision is bfloat16)."""
    round_rows(a, a_pairs)
    bf16_product(a_pairs, False, panels, out, scratch, False)


@kernel
def repeated_bf16_step_product(a, a_pairs, panels, out, scratch, times):
    """``bf16_step_product`` ``times`` times in one compiled call, for the tuner and the
    benchmarks."""
    for _ in range(times):
        bf16_step_product(a, a_pairs, panels, out, scratch)


@kernel
def repeated_bf16_product(a, panels, out, scratch, times):
    """``bf16_product`` (rows layout, plain result) ``times`` times in one compiled call,
    for the benchmarks: the product alone, its operands already rounded."""
    for _ in range(times):
        bf16_product(a, False, panels, out, scratch, False)
