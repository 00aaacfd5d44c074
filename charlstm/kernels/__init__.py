"""Numba kernels. Each module pairs a forward kernel with its backward twin.

Every kernel is compiled lazily for the dtype it is called with: float32 for training,
float64 for the gradient checks. ``cache=True`` keeps the machine code on disk so the
second start of charlstm does not recompile.
"""
