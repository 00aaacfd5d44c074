"""``charlstm gradcheck``: the analytic gradients against central finite differences.

The check of tests/test_gradcheck.py, as a command a user can run on any machine (a
different CPU, BLAS or Numba build): a tiny float64 model (vocabulary 5, hidden size 3,
2 layers, batch 2, 3 steps, PyTorch's initialisation) with a random non-zero initial
state; for every entry of every parameter tensor, and of h0 (and c0 for the LSTM
family), the mean loss ``Network.loss_sum(...) / (B*T)`` is evaluated at +-eps
(eps = 1e-6) and

    fd = (loss(+eps) - loss(-eps)) / (2 eps)

is compared with ``Network.loss_and_grad``'s gradient. The error per tensor is the
norm-based relative error

    rel = ||fd - g||_2 / max(||fd||_2 + ||g||_2, 1e-300)

(scale-free, not dominated by near-zero entries, at most 1); a tensor passes when rel is
below 1e-6. A correct gradient gives 1e-10 to ~2e-7 here; one wrong by 0.1% gives ~5e-4.

With dropout, one mask is drawn and held fixed for the analytic gradient and every loss
evaluation: the check is of the masked network's gradient, which is what training uses.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import TrainConfig

# NumPy, the model and its kernels (Numba) are imported when a check runs, not when the
# CLI starts.

EPS = 1e-6
REL_TOL = 1e-6
VOCAB, HIDDEN, LAYERS, BATCH, STEPS = 5, 3, 2, 2, 3


def rel_error(a, b) -> float:
    import numpy as np

    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


@dataclass
class TensorCheck:
    cell: str
    parameter: str
    shape: tuple
    rel_error: float
    ok: bool


def check_gradients(cell: str, seed: int = 0, eps: float = EPS, tol: float = REL_TOL,
                    vocab_size: int = VOCAB, hidden_size: int = HIDDEN, num_layers: int = LAYERS,
                    batch_size: int = BATCH, seq_len: int = STEPS,
                    dropout: float = 0.0) -> list[TensorCheck]:
    """One TensorCheck per parameter tensor (state_dict order), then h0 (and c0)."""
    import numpy as np

    from charlstm.model.dropout import DropoutMasks
    from charlstm.model.parameters import init_params
    from charlstm.model.network import Network

    V, H, L, B, T = vocab_size, hidden_size, num_layers, batch_size, seq_len
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L, seq_len=T, batch_size=B)
    params = init_params(config, V, np.random.default_rng(seed), dtype=np.float64)
    net = Network(config, V, params)
    rng = np.random.default_rng(seed + 1)
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    state0 = {"h": rng.uniform(-0.9, 0.9, size=(L, B, H))}
    if CELL_TABLE[cell].has_cell_state:
        state0["c"] = rng.uniform(-1.5, 1.5, size=(L, B, H))
    masks = None
    if dropout > 0:
        masks = DropoutMasks(dropout, L, T, B, H, np.float64).draw(np.random.default_rng(seed + 2))

    def fresh_state():
        return {k: v.copy() for k, v in state0.items()}

    net.loss_and_grad(inputs, targets, fresh_state(), masks)
    ws = net.workspace(T, B)
    analytic = {name: g.copy() for name, g in net.grads.items()}
    analytic["h0"] = ws.dh0.copy()
    tensors = {name: params[name] for name in params}
    tensors["h0"] = state0["h"]
    if CELL_TABLE[cell].has_cell_state:
        analytic["c0"] = ws.dc0.copy()
        tensors["c0"] = state0["c"]

    def mean_loss():
        return net.loss_sum(inputs, targets, fresh_state(), masks) / (B * T)

    results = []
    for name, arr in tensors.items():
        fd = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + eps
            plus = mean_loss()
            arr[idx] = orig - eps
            minus = mean_loss()
            arr[idx] = orig
            fd[idx] = (plus - minus) / (2.0 * eps)
        err = rel_error(fd, analytic[name])
        results.append(TensorCheck(cell, name, tuple(arr.shape), err,
                                   bool(math.isfinite(err) and err < tol)))
    return results


def report_json(results: list, seed: int, dropout: float) -> dict:
    """The checks as `charlstm gradcheck --json` prints them."""
    return {
        "ok": all(r.ok for r in results), "eps": EPS, "tolerance": REL_TOL, "seed": seed,
        "dropout": dropout,
        "model": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_layers": LAYERS,
                  "batch_size": BATCH, "seq_len": STEPS},
        "checks": [dict(asdict(r), shape=list(r.shape),
                        rel_error=r.rel_error if math.isfinite(r.rel_error) else None)
                   for r in results],
    }


def report_lines(results: list) -> list[str]:
    """The checks as a table, one tensor a line, and a verdict."""
    width = max(len(r.parameter) for r in results)
    cell_width = max(len("cell"), *(len(r.cell) for r in results))
    lines = [f"{'cell':<{cell_width}} {'parameter':<{width}} {'shape':<8} {'rel. error':>10}"]
    for r in results:
        shape = "x".join(map(str, r.shape))
        lines.append(f"{r.cell:<{cell_width}} {r.parameter:<{width}} {shape:<8} "
                     f"{r.rel_error:>10.2e}  "
                     f"{'ok' if r.ok else 'FAIL'}")
    failed = [r for r in results if not r.ok]
    worst = max(results, key=lambda r: r.rel_error if math.isfinite(r.rel_error) else math.inf)
    if failed:
        lines.append(f"{len(failed)} of {len(results)} tensors FAIL (relative error not below "
                     f"{REL_TOL:g}; eps {EPS:g})")
    else:
        lines.append(f"all {len(results)} tensors ok: worst relative error {worst.rel_error:.2e} "
                     f"({worst.cell} {worst.parameter}), bound {REL_TOL:g}, eps {EPS:g}")
    return lines
