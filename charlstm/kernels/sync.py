"""Two kernels on two cores meeting at a barrier, without leaving compiled code.

Batch-1 sampling splits each character's matrix-vector products over the cores
(sampling.py), and the cores must meet a few times per character: a few microseconds of
work between meetings. Numba's parallel regions cost far more than that per region
(234 us against 36 us of work; benchmarks/sampling_cost.py), so each core runs one long
kernel call from its own thread, and they meet at a spinning barrier: each rank stores
how many barriers it has reached (a release store) and spins on the others' counts
(acquire loads), one 64-byte line per rank so the counts do not share a cache line.

Numba has no atomics, so the loads, stores and the spin-loop hint are written in LLVM IR
(numba.extending.intrinsic).
"""
import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .jit import kernel

LINKS_BLAS = False  # see blas._kernels_linked
SLOT = 8  # int64s per rank's counter: one 64-byte cache line each
# Spins before a barrier gives up on a rank that does not arrive (its thread could not
# start, or the machine is so busy that it waits for a core): about 0.2 s on an AMD EPYC
# Zen 5, where a spin (one pause) took 25 ns; the sampler then redoes the characters on
# one core (charlstm/sample.py). Longer, and Ctrl-C at the wrong moment kept a process
# spinning for seconds before it could exit.
SPIN_LIMIT = 1 << 23
YIELD_EVERY = 256  # spins between offers of the core to another thread (about 6 us)
# The LLVM intrinsic that tells the core it is in a spin loop (x86's pause, Arm's yield
# hint), per architecture; nothing where unknown. (llvmlite's JIT has no assembler for
# inline asm, so these are intrinsics.)
_PAUSE = {"x86_64": ("llvm.x86.sse2.pause", ()), "amd64": ("llvm.x86.sse2.pause", ()),
          "aarch64": ("llvm.aarch64.hint", (1,)), "arm64": ("llvm.aarch64.hint", (1,)),
          }.get(platform.machine().lower())


def _int64_array(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.layout == "C"


def _element_pointer(context, builder, arr_type, arr, index):
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.gep(data, [index])


@intrinsic
def load_acquire(typingctx, arr, index):
    """arr[index] of a C-contiguous int64 array, as an atomic load with acquire order."""
    if not _int64_array(arr):
        raise TypingError("load_acquire needs a C-contiguous int64 array")

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, types.intp), codegen


@intrinsic
def store_release(typingctx, arr, index, value):
    """arr[index] = value for a C-contiguous int64 array, as an atomic store with release
    order: every write before it is visible to a rank that load_acquires the value."""
    if not _int64_array(arr):
        raise TypingError("store_release needs a C-contiguous int64 array")

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def spin_pause(typingctx):
    """The CPU's spin-loop hint (x86 pause, Arm yield): a waiting core yields its
    pipeline to its sibling and stops speculating on the line it polls."""

    def codegen(context, builder, signature, args):
        if _PAUSE is not None:
            name, operands = _PAUSE
            i32 = ir.IntType(32)
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i32] * len(operands)), name)
            builder.call(hint, [ir.Constant(i32, v) for v in operands])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(2): let another thread that is ready to run on this core run first.
    Resolved from the C library loaded in the process, as Numba resolves libm's."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@kernel(inline="always")
def wait_until_reached(counts, index, value, spin_limit):
    """Spin, without the GIL, until counts[index] >= value (an acquire load): True, or
    False after ``spin_limit`` spins (the caller then sleeps instead).

    Every YIELD_EVERY spins the core is offered to another ready thread: where the
    thread being waited for shares this core (more threads than free cores), spinning
    alone kept it off the core for whole scheduler slices, and a two-thread step of a
    small model on one free core took 2.6 times as long as on one thread. Where no
    thread is waiting for the core, sched_yield returns at once.
    counts : C-contiguous int64."""
    spins = 0
    while load_acquire(counts, index) < value:
        spin_pause()
        spins += 1
        if spins % YIELD_EVERY == 0:
            if spins > spin_limit:
                return False
            yield_core()
    return True


@kernel(inline="always")
def barrier(counts, rank, ranks, reached, spin_limit=SPIN_LIMIT):
    """Wait until every rank of ``ranks`` has reached barrier number ``reached``.

    counts : int64 [ranks * SLOT], zero at the start of the ranks' work; rank r's count
    is counts[r * SLOT]. Returns False if another rank did not arrive within
    ``spin_limit`` spins (then the caller abandons its work), True otherwise. One rank:
    True at once.
    """
    if ranks == 1:
        return True
    store_release(counts, rank * SLOT, reached)
    for other in range(ranks):
        if other != rank and not wait_until_reached(counts, other * SLOT, reached, spin_limit):
            return False
    return True


@kernel
def publish(counts, index, value):
    """counts[index] = value as a release store, from Python: the job written before it
    is visible to a thread that sees the value (handoff.py)."""
    store_release(counts, index, value)


@kernel
def publish_then_wait(counts, index, value, wait_index, wait_value, spin_limit):
    """publish(counts, index, value), then wait_until_reached(counts, wait_index,
    wait_value, spin_limit), in one call: a worker reports a job done and waits for the
    next without taking the GIL in between, so the owner that waits for the report gets
    the GIL at once instead of sleeping until the worker lets go of it."""
    store_release(counts, index, value)
    return wait_until_reached(counts, wait_index, wait_value, spin_limit)
