"""The machine a run is on: what the CPU is and can run (cpu.py), which BLAS and operand
layout multiply fastest here (tune.py), remembered per machine (tuning_cache.py). The
compiled code itself is in charlstm.kernels."""
