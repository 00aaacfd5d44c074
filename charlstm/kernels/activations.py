"""Scalar nonlinearities shared by the cell kernels.

float64 (the gradient checks) uses libm's exp and tanh: exact to the last bit that
matters. float32 (training) uses an exp built from multiplies, adds and one bit cast,
which LLVM vectorises; a libm call per element cost 3-18 ns here and dominated a step.
Its error against float64 is below 2e-7 absolute for sigmoid and tanh, and tanh keeps
its relative accuracy near 0 (tests/test_activations.py).
"""
import math

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .jit import kernel


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


_LOG2E = np.float32(1.4426950408889634)
# ln 2 split in two (Cody-Waite): n * _LN2_HI is exact in float32 for |n| < 2**9, so the
# reduced argument keeps full precision even for large |x|.
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.4286068203094173e-06)
# Taylor coefficients of exp(r) on |r| <= ln(2)/2: 1/k!; truncation error below 1e-8.
_C = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
_X_MAX = np.float32(88.0)
_X_MIN = np.float32(-87.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_SMALL = np.float32(0.1)
_TAYLOR3 = np.float32(-1.0 / 3.0)
_TAYLOR5 = np.float32(2.0 / 15.0)


@kernel(inline="always")
def exp_f32(x):
    """exp(x) for float32 x, relative error about 1e-7, vectorisable (no libm call)."""
    x = min(max(x, _X_MIN), _X_MAX)
    n = np.floor(x * _LOG2E + _HALF)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _C[7]
    p = p * r + _C[6]
    p = p * r + _C[5]
    p = p * r + _C[4]
    p = p * r + _C[3]
    p = p * r + _C[2]
    p = p * r + _C[1]
    p = p * r + _C[0]
    scale = _int32_bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return p * scale


def exp(x):
    """e**x: exp_f32 for float32, libm's for float64; compiled only (overload below)."""
    raise NotImplementedError


def sigmoid(x):
    """Logistic function; compiled only (see the overload below)."""
    raise NotImplementedError


@overload(exp, inline="always")
def _exp(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: np.exp(x)


def tanh(x):
    """Hyperbolic tangent; compiled only (see the overload below)."""
    raise NotImplementedError


@overload(sigmoid, inline="always")
def _sigmoid(x):
    if x == types.float32:
        def impl(x):
            return _ONE / (_ONE + exp_f32(-x))
    else:
        def impl(x):
            # exp(-x) overflows to inf for very negative x, giving 1/inf = 0: no NaN.
            return 1.0 / (1.0 + np.exp(-x))
    return impl


@overload(tanh, inline="always")
def _tanh(x):
    if x == types.float32:
        def impl(x):
            # tanh|x| = 1 - 2 / (exp(2|x|) + 1): no cancellation worse than 1 ulp of 1.
            a = abs(x)
            t = _ONE - _TWO / (exp_f32(_TWO * a) + _ONE)
            # Near 0 the formula above keeps only absolute accuracy; the odd Taylor
            # polynomial keeps relative accuracy there (truncation error < 1e-8 * |x|).
            x2 = a * a
            small = a * (_ONE + x2 * (_TAYLOR3 + x2 * _TAYLOR5))
            # A blend, not a branch: a conditional expression inside this inlined
            # overload trips a Numba IR check, and arithmetic vectorises anyway.
            use_small = np.float32(a < _SMALL)
            t = use_small * small + (_ONE - use_small) * t
            return np.float32(math.copysign(t, x))
    else:
        def impl(x):
            return np.tanh(x)
    return impl


def one_like(array):
    """1 in the dtype of ``array``; compiled only. A bare ``1.0`` would promote float32
    arithmetic to float64 inside the gate loops."""
    raise NotImplementedError


@overload(one_like, inline="always")
def _one_like(array):
    if array.dtype == types.float32:
        return lambda array: _ONE
    return lambda array: 1.0
