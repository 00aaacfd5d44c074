"""The integer codes by which compiled kernels tell cells apart (one compiled sampling
kernel serves every cell). Plain constants, importable without Numba; charlstm/cells.py
gives each cell its code."""
CELL_LSTM, CELL_RNN, CELL_GRU, CELL_PEEPHOLE, CELL_CIFG = 0, 1, 2, 3, 4
