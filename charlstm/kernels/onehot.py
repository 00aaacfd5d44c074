"""Layer 0's input projection of one-hot characters: a row gather and its scatter twin.

A one-hot input x times weight_ih.T is the column of weight_ih for that character, so the
projection is a table lookup and its gradient a scatter-add; no GEMM over V is needed.
"""
from .jit import kernel


@kernel
def onehot_forward(table, ids, out):
    """out[n, :] = table[ids[n], :].

    table : [V, G*H] ``weight_ih.T`` with both biases added; ids : [N]; out : [N, G*H].
    """
    N, D = out.shape
    for n in range(N):
        row = table[ids[n]]
        for d in range(D):
            out[n, d] = row[d]


@kernel
def onehot_backward(dpre, ids, dtable):
    """dtable[v, :] = sum of dpre[n, :] over rows n with ids[n] == v (overwrites dtable)."""
    dtable[:] = 0.0
    N, D = dpre.shape
    for n in range(N):
        row = dtable[ids[n]]
        for d in range(D):
            row[d] += dpre[n, d]
