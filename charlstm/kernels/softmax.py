"""Softmax cross-entropy over the decoder's logits: the loss beside its gradient.

Both run the same row pass (``_exp_row``), so they give the same loss to the last bit.
Its exponentials are a loop LLVM vectorises (activations.exp: no libm call for
float32), and their sum runs in four interleaved partial sums, in a fixed order: one
running sum waits out an add's latency per element. At S's [1024, 65] logits per shard
the gradient pass went from 0.24 to 0.08 ms on an AMD EPYC Zen 5
(benchmarks/profile_step.py --config S --shard-of 2).
"""
import math

import numpy as np

from .activations import exp
from .jit import kernel


@kernel(inline="always")
def _exp_row(row, out):
    """out[v] = exp(row[v] - max(row)); returns (max(row), sum of out in float64)."""
    V = row.shape[0]
    m = row[0]
    for v in range(1, V):
        if row[v] > m:
            m = row[v]
    for v in range(V):
        out[v] = exp(row[v] - m)
    s0 = s1 = s2 = s3 = 0.0
    v = 0
    while v + 4 <= V:
        s0 += out[v]
        s1 += out[v + 1]
        s2 += out[v + 2]
        s3 += out[v + 3]
        v += 4
    while v < V:
        s0 += out[v]
        v += 1
    return m, (s0 + s1) + (s2 + s3)


@kernel
def softmax_xent_loss(logits, targets):
    """Sum over rows of -log softmax(logits)[target], accumulated in float64.

    Parameters
    ----------
    logits : [N, V]; targets : [N] integer ids. Not modified.
    """
    N, V = logits.shape
    scratch = np.empty(V, logits.dtype)
    total = 0.0
    for n in range(N):
        m, s = _exp_row(logits[n], scratch)
        total += math.log(s) - (logits[n, targets[n]] - m)
    return total


@kernel
def softmax_xent_grad(logits, targets, scale):
    """Overwrite ``logits`` with ``scale * (softmax(logits) - onehot(targets))``.

    Returns the summed loss, as ``softmax_xent_loss`` would, from the same pass.
    """
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        row = logits[n]
        y = targets[n]
        target_logit = row[y]
        m, s = _exp_row(row, row)
        total += math.log(s) - (target_logit - m)
        inv = scale / s
        for v in range(V):
            row[v] = row[v] * inv
        row[y] -= scale
    return total
