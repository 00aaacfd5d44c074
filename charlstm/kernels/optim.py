"""Fused, in-place optimizer updates over the flat parameter buffer.

Each follows PyTorch's update rule for the optimizer of the same name with default
options, so a checkpoint's optimizer state means what PyTorch's would.
"""
import math

from .jit import kernel


@kernel
def sum_of_squares(x):
    """sum(x**2) accumulated in float64."""
    total = 0.0
    for i in range(x.size):
        v = float(x[i])
        total += v * v
    return total


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
