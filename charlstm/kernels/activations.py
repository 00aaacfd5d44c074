"""Scalar nonlinearities shared by the cell kernels.

float64 (the gradient checks) uses libm's exp and tanh: exact to the last bit that
matters. float32 (training) uses an exp built from multiplies, adds and one bit cast,
which LLVM vectorises; a libm call per element cost 3-18 ns here and dominated a step.
Its error against float64 is below 2e-7 absolute for sigmoid and tanh (tests/test_activations.py).
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
_LN2 = np.float32(0.6931471805599453)
# Taylor coefficients of 2**f = exp(f ln 2) on |f| <= 1/2: (ln 2)**k / k!.
_C = tuple(np.float32(math.log(2) ** k / math.factorial(k)) for k in range(8))
_X_MAX = np.float32(88.0)
_X_MIN = np.float32(-87.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)


@kernel(inline="always")
def exp_f32(x):
    """exp(x) for float32 x, relative error about 1e-7, vectorisable (no libm call)."""
    x = min(max(x, _X_MIN), _X_MAX)
    y = x * _LOG2E
    n = np.floor(y + _HALF)
    f = y - n
    p = _C[7]
    p = p * f + _C[6]
    p = p * f + _C[5]
    p = p * f + _C[4]
    p = p * f + _C[3]
    p = p * f + _C[2]
    p = p * f + _C[1]
    p = p * f + _C[0]
    scale = _int32_bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return p * scale


def sigmoid(x):
    """Logistic function; compiled only (see the overload below)."""
    raise NotImplementedError


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
            t = _ONE - _TWO / (exp_f32(_TWO * abs(x)) + _ONE)
            return np.float32(math.copysign(t, x))
    else:
        def impl(x):
            return np.tanh(x)
    return impl
