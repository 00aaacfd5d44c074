"""The tuner's timing loop for bfloat16 step products (tune.tune_bf16).

Only ever called with the bfloat16 tuples of mixed.LowPrecisionProducts.step_weight, whose
products call no BLAS (charlstm's panels, or oneMKL's packed bfloat16 compute, bound apart
from the BLAS choice): so timing them before the process binds its library does not lock
that binding (blas._kernels_linked).
"""
from .blas import recurrent_forward
from .jit import kernel

LINKS_BLAS = False


@kernel
def repeated_step_product(h, weight, out, times):
    """``recurrent_forward`` of a bfloat16 step weight ``times`` times in one compiled
    call, so that Python's call overhead stays out of the figure."""
    for _ in range(times):
        recurrent_forward(h, weight, out, 0)
