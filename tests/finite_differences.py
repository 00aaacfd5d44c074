"""Central finite differences and the error measure every gradient test uses.

The step and the bound are explained in test_gradcheck.py's docstring: with eps = 1e-6 a
correct float64 gradient gives a norm-relative error between ~1e-10 and ~2e-7 on these
tiny models; one wrong by 0.1% gives ~5e-4.
"""
import numpy as np

EPS = 1e-6
REL_TOL = 1e-6


def rel_error(a, b) -> float:
    """||a - b||_2 / (||a||_2 + ||b||_2): scale-free, not dominated by near-zero entries."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def central_differences(arr, loss, eps=EPS):
    """(loss() at arr[idx] + eps - loss() at arr[idx] - eps) / (2 eps) for every entry of
    ``arr``, which is perturbed in place and restored exactly."""
    fd = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        plus = loss()
        arr[idx] = orig - eps
        minus = loss()
        arr[idx] = orig
        fd[idx] = (plus - minus) / (2.0 * eps)
    return fd
