"""``charlstm gradflow``: how far back the gradient of one prediction reaches.

For a chunk of T + 2 characters of a text, the model reads the first T + 1 (positions
t = 0..T) from zero state and predicts the last; L_T is the cross-entropy (natural log)
of that one prediction. For every layer k and step t this module computes

    dL_T/dh_t   (and dL_T/dc_t for the LSTM family: lstm, peephole, cifg)

the gradient with respect to the value h_t of layer k (c_t), everywhere it is used
afterwards: by the layer's own next step, by the layer above at step t (or, for the top
layer, by the decoder at t), and, for c_t, by h_t = o_t * tanh(c_t) (and, in the peephole
cell, by o_t's peephole too). Its Euclidean norm over the H units, against the distance
T - t, shows how the error signal of one prediction decays (or grows) on its way back
through time. Every layer is reported; l0 is the bottom one.

The computation uses the package's own kernels in float64: one forward pass over the
chunk (``Network.forward``), then each layer's backward kernel one step at a time (calls
with T = 1) from the top layer down, carrying dh (and dc) between the calls, so every
dL_T/dh_t is seen in O(T). Several chunks, evenly spaced over the text, run as one
batch (each its own row, from zero state); the reported value is the mean norm over
them.
"""
from __future__ import annotations

import math
from pathlib import Path

from typing import TYPE_CHECKING

from charlstm.model.cells import CELL_TABLE
from charlstm.errors import UserError
from charlstm.files import atomic_write
from charlstm.tools.plot import agg_figure

# NumPy, the network and its kernels (Numba) are imported when the command runs, not when
# the CLI starts.
if TYPE_CHECKING:
    import numpy as np

    from charlstm.model.network import Network

DEFAULT_LENGTH = 64
DEFAULT_CHUNKS = 16


def quantity_names(cell: str, num_layers: int) -> list[str]:
    """Column names: h_l0 (c_l0), h_l1 (c_l1), ... from the bottom layer up."""
    return [f"{key}_l{k}" for k in range(num_layers) for key in CELL_TABLE[cell].state]


def flow_gradients(net: Network, inputs: np.ndarray, targets: np.ndarray,
                   keep_vectors: bool = False) -> dict:
    """Gradients of each chunk's last-position loss with respect to every h_t (c_t).

    Parameters
    ----------
    net : a float64 Network.
    inputs : [K, S] ids: K chunks of S = T + 1 input characters, each read from zero state.
    targets : [K] ids: the character each chunk predicts after its last input.

    Returns a dict: ``loss`` [K] (L_T of each chunk, natural log); ``norms`` {name: [K, S]},
    the norm over units of dL_T/dh_t of layer k (name ``h_l{k}``; ``c_l{k}`` for the cell
    state of the LSTM family) at step t = 0..S-1; with ``keep_vectors``, ``vectors``
    {name: [S, K, H]}.
    """
    import numpy as np

    from charlstm.kernels.cifg import cifg_backward
    from charlstm.kernels.gru import gru_backward
    from charlstm.kernels.lstm import lstm_backward
    from charlstm.kernels.peephole import peephole_backward
    from charlstm.kernels.rnn import rnn_backward

    if net.dtype != np.float64:
        raise ValueError("flow_gradients needs a float64 network")
    inputs = np.ascontiguousarray(inputs)
    targets = np.asarray(targets)
    K, S = inputs.shape
    H, G, L, V = net.H, net.G, net.num_layers, net.V
    p = net.params
    ws = net.forward(inputs, net.zero_state(K))
    logits = ws.logits.reshape(S, K, V)[S - 1].astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(K)
    loss = -logp[rows, targets]
    dlogits = np.exp(logp)
    dlogits[rows, targets] -= 1.0  # d L_T / d logits of each chunk's last position

    # Gradient reaching each layer's h_t from above (the decoder for the top layer).
    dhs = np.zeros((S, K, H))
    dhs[S - 1] = dlogits @ p["decoder.weight"]
    norms, vectors = {}, {}
    dpre = np.empty((S, K, G * H))
    if net.cell == "gru":
        drec = np.empty((S, K, G * H))
        scratch = np.empty((K, H))
    for k in range(L - 1, -1, -1):
        w_hh = p[f"rnn.weight_hh_l{k}"]
        dh = np.zeros((K, H))  # gradient reaching h_t through the recurrence (from t + 1)
        dc = np.zeros((K, H))
        h_norm = np.empty((K, S))
        c_norm = np.empty((K, S))
        if keep_vectors:
            h_vec = np.empty((S, K, H))
            c_vec = np.empty((S, K, H))
        for t in range(S - 1, -1, -1):
            node_h = dh + dhs[t]
            h_norm[:, t] = np.linalg.norm(node_h, axis=1)
            if keep_vectors:
                h_vec[t] = node_h
            one = slice(t, t + 1)
            if net.has_cell_state:
                o = ws.gates[k][t, :, (G - 1) * H:]  # the output gate is the last block
                tc = ws.tanh_cs[k][t]
                node_c = dc + node_h * o * (1.0 - tc * tc)  # c_t reaches h_t and c_{t+1}
                if net.cell == "peephole":  # and o_t, through its peephole
                    node_c = node_c + node_h * tc * o * (1.0 - o) * p[f"rnn.weight_co_l{k}"]
                c_norm[:, t] = np.linalg.norm(node_c, axis=1)
                if keep_vectors:
                    c_vec[t] = node_c
                c_prev = ws.c0[k] if t == 0 else ws.cs[k][t - 1]
                saved = (ws.cs[k][one], ws.gates[k][one], ws.tanh_cs[k][one])
                if net.cell == "lstm":
                    lstm_backward(w_hh, c_prev, *saved, dhs[one], dh, dc, dpre[one])
                elif net.cell == "peephole":
                    peephole_backward(w_hh, *net.peepholes(k), c_prev, *saved, dhs[one], dh, dc,
                                      dpre[one])
                else:
                    cifg_backward(w_hh, c_prev, *saved, dhs[one], dh, dc, dpre[one])
            elif net.cell == "gru":
                h_prev = ws.h0[k] if t == 0 else ws.hs[k][t - 1]
                gru_backward(w_hh, h_prev, ws.hs[k][one], ws.gates[k][one], ws.ghns[k][one],
                             dhs[one], dh, dpre[one], drec[one], scratch)
            else:
                rnn_backward(w_hh, ws.hs[k][one], dhs[one], dh, dpre[one])
            # dh (dc) now holds the gradient reaching h_{t-1} (c_{t-1}) through step t.
        norms[f"h_l{k}"] = h_norm
        if keep_vectors:
            vectors[f"h_l{k}"] = h_vec
        if net.has_cell_state:
            norms[f"c_l{k}"] = c_norm
            if keep_vectors:
                vectors[f"c_l{k}"] = c_vec
        if k > 0:
            # Layer k's input at step t is layer k-1's h_t.
            dhs = (dpre.reshape(S * K, G * H) @ p[f"rnn.weight_ih_l{k}"]).reshape(S, K, H)
    names = quantity_names(net.cell, L)
    out = {"loss": loss, "norms": {n: norms[n] for n in names}}
    if keep_vectors:
        out["vectors"] = {n: vectors[n] for n in names}
    return out


def chunk_starts(n_chars: int, length: int, chunks: int) -> list[int]:
    """Start offsets of up to ``chunks`` windows of length + 2 characters, evenly spaced
    from the text's start to its end (distinct, ascending)."""
    import numpy as np

    window = length + 2
    last = n_chars - window
    if last < 0:
        return []
    count = min(chunks, last + 1)
    return sorted(set(int(round(x)) for x in np.linspace(0, last, count)))


def gradient_flow(net: Network, ids: np.ndarray, length: int = DEFAULT_LENGTH,
                  chunks: int = DEFAULT_CHUNKS) -> dict:
    """Mean norms over up to ``chunks`` chunks of ``ids``, indexed by distance 0..length.

    Returns {"starts": [...], "targets_at": [...], "loss": mean L_T (nats),
    "mean_norm": {name: [length + 1 floats, distance 0 first]}}.
    """
    import numpy as np

    starts = chunk_starts(len(ids), length, chunks)
    if not starts:
        raise ValueError("text shorter than one chunk")
    S = length + 1
    windows = np.stack([np.asarray(ids[s:s + S + 1], dtype=np.int64) for s in starts])
    res = flow_gradients(net, windows[:, :S], windows[:, S])
    mean = {name: v.mean(axis=0)[::-1].tolist() for name, v in res["norms"].items()}
    return {"starts": starts, "targets_at": [s + S for s in starts],
            "loss": float(res["loss"].mean()), "mean_norm": mean}


def _plot(result: dict, path: str) -> None:
    import numpy as np

    FigureCanvasAgg, Figure = agg_figure()
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state or a window
    ax = fig.subplots()
    distance = result["distance"]
    for name, values in result["mean_norm"].items():
        y = np.asarray(values, dtype=np.float64)
        y = np.where(y > 0, y, np.nan)  # a zero gradient has no place on a log axis
        label = ("||dL_T/dh_t||" if name.startswith("h") else "||dL_T/dc_t||") + \
            f", layer {name.split('_l')[1]}"
        ax.plot(distance, y, marker="." if len(distance) <= 80 else None, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance T - t (steps back from the predicting position)")
    ax.set_ylabel(f"mean norm over {result['chunks']} chunks")
    ax.set_title(f"gradient flow: {result['cell']} {result['num_layers']}x{result['hidden_size']}, "
                 f"{Path(result['checkpoint']).parent.name}/{Path(result['checkpoint']).name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        with atomic_write(path, parents=True) as f:
            fig.savefig(f, dpi=120, format="png")
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); nothing was written: free "
                        f"space or choose another -o") from None


def gradflow_report(checkpoint, text: str, length: int = DEFAULT_LENGTH,
                    chunks: int = DEFAULT_CHUNKS, encoding: str = "utf-8",
                    output: str | None = None) -> dict:
    """`charlstm gradflow`: the mean gradient norms of CHECKPOINT's model (a file or a run
    directory, best.npz preferred) over chunks of ``text`` (a file or a built-in corpus),
    as a JSON-ready dict; with ``output``, the curves drawn to that PNG too.

    Raises UserError for an unusable checkpoint or text, a missing matplotlib, or an
    ``output`` that would replace a checkpoint, a run's file or the text (export.check_output)."""
    import numpy as np

    from charlstm.model import checkpoint as ckpt_io
    from charlstm.data.corpus import read_text_file
    from charlstm.model.network import Network

    if output is not None:
        from charlstm.model.export import check_output

        check_output([checkpoint, text], output, writer="plot")
        agg_figure()  # a missing matplotlib is said before any work
    path = ckpt_io.resolve_checkpoint(checkpoint, prefer_best=True)
    ckpt = ckpt_io.load(path)
    content = read_text_file(text, encoding)
    ckpt.vocab.require_covers(content, str(text), "give text the model was trained on")
    if len(content) < length + 2:
        raise UserError(f"{text} has {len(content)} characters; --length {length} needs at "
                        f"least {length + 2}: give a longer text or a smaller --length")
    cfg = ckpt.config
    net = Network(cfg, len(ckpt.vocab), ckpt.params.astype(np.float64))
    flow = gradient_flow(net, ckpt.vocab.encode(content), length, chunks)
    result = {
        "checkpoint": str(path), "cell": cfg.cell, "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size, "length": length, "chunks": len(flow["starts"]),
        "layers": "every (l0 is the bottom layer)",
        "targets_at": flow["targets_at"], "mean_loss_nats": flow["loss"],
        "distance": list(range(length + 1)), "mean_norm": flow["mean_norm"],
    }
    if output is not None:
        _plot(result, output)
    return result


def report_lines(result: dict) -> list[str]:
    """A gradflow_report as a table: one line per distance, one column per quantity."""
    names = list(result["mean_norm"])
    lines = [f"# mean over {result['chunks']} chunks of ||dL_T/dh_t|| (h_lK) and ||dL_T/dc_t|| "
             f"(c_lK) for layer K (l0 the bottom); L_T: loss at the chunk's last position "
             f"(mean {result['mean_loss_nats'] / math.log(2):.3f} bits)",
             f"{'distance':>8}" + "".join(f"{n:>12}" for n in names)]
    for d in result["distance"]:
        lines.append(f"{d:>8}" + "".join(f"{result['mean_norm'][n][d]:>12.4e}" for n in names))
    return lines
