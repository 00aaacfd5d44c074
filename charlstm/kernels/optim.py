"""Fused, in-place optimizer updates over the flat parameter buffer.

Each follows PyTorch's update rule for the optimizer of the same name with default
options, so a checkpoint's optimizer state means what PyTorch's would.
"""
import math

from .jit import kernel


@kernel
def sum_of_squares(x):
    """sum(x**2) accumulated in float64, in eight interleaved partial sums added in a
    fixed order: one running sum waited out an add's latency per element, and this runs
    once per step on one core while the other waits (the gradient norm for clipping)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = x.size
    i = 0
    while i + 8 <= n:
        v0, v1, v2, v3 = float(x[i]), float(x[i + 1]), float(x[i + 2]), float(x[i + 3])
        v4, v5, v6, v7 = float(x[i + 4]), float(x[i + 5]), float(x[i + 6]), float(x[i + 7])
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
        s4 += v4 * v4
        s5 += v5 * v5
        s6 += v6 * v6
        s7 += v7 * v7
        i += 8
    while i < n:
        v = float(x[i])
        s0 += v * v
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@kernel
def scale_inplace(x, factor):
    for i in range(x.size):
        x[i] *= factor


@kernel
def sgd_update(param, grad, momentum_buffer, lr, momentum):
    for i in range(param.size):
        g = grad[i]
        if momentum != 0.0:
            g = momentum * momentum_buffer[i] + g
            momentum_buffer[i] = g
        param[i] -= lr * g


@kernel
def adam_update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = math.sqrt(1.0 - beta2 ** step)
    step_size = lr / bias1
    for i in range(param.size):
        g = grad[i]
        m = beta1 * exp_avg[i] + (1.0 - beta1) * g
        v = beta2 * exp_avg_sq[i] + (1.0 - beta2) * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] -= step_size * m / (math.sqrt(v) / bias2_sqrt + eps)


@kernel
def rmsprop_update(param, grad, square_avg, lr, alpha, eps):
    for i in range(param.size):
        g = grad[i]
        v = alpha * square_avg[i] + (1.0 - alpha) * g * g
        square_avg[i] = v
        param[i] -= lr * g / (math.sqrt(v) + eps)


@kernel
def adagrad_update(param, grad, state_sum, lr, eps):
    for i in range(param.size):
        g = grad[i]
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] -= lr * g / (math.sqrt(s) + eps)
