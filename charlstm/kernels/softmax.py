"""Softmax cross-entropy over the decoder's logits: the loss beside its gradient."""
import math

from .jit import kernel


@kernel
def softmax_xent_loss(logits, targets):
    """Sum over rows of -log softmax(logits)[target], accumulated in float64.

    Parameters
    ----------
    logits : [N, V]; targets : [N] integer ids.
    """
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        m = logits[n, 0]
        for v in range(1, V):
            if logits[n, v] > m:
                m = logits[n, v]
        s = 0.0
        for v in range(V):
            s += math.exp(logits[n, v] - m)
        total += math.log(s) + m - logits[n, targets[n]]
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
        target_logit = row[targets[n]]
        m = row[0]
        for v in range(1, V):
            if row[v] > m:
                m = row[v]
        s = 0.0
        for v in range(V):
            e = math.exp(row[v] - m)
            row[v] = e
            s += e
        y = targets[n]
        total += math.log(s) - (target_logit - m)
        inv = scale / s
        for v in range(V):
            row[v] = row[v] * inv
        row[y] -= scale
    return total
