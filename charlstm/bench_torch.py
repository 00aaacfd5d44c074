"""The PyTorch side of `charlstm bench --compare-torch`: the same model (one-hot input,
nn.LSTM/nn.RNN, Linear, softmax cross-entropy, Adam, clip 5, truncated BPTT over the same
streams), timed the same way. Imported only when torch is installed; charlstm never
depends on it."""
from __future__ import annotations

import time

import numpy as np


def worker_torch(spec: dict, corpus: str | None, steps: int, warmup: int, threads: int,
                 sample_chars: int) -> dict:
    import torch

    from .config import TrainConfig
    from .train import prepare_data

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = TrainConfig(corpus=(corpus,) if corpus else (), **spec)
    data = prepare_data(config)
    V = len(data.vocab)
    T, B, H, L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
    streams = torch.from_numpy(data.batches.streams.astype(np.int64))
    module = {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN, "gru": torch.nn.GRU}[spec["cell"]](V, H, L)
    decoder = torch.nn.Linear(H, V)
    eye = torch.eye(V)
    params = list(module.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    zero = torch.zeros(L, B, H)
    state = (zero, zero.clone()) if spec["cell"] == "lstm" else zero
    times = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        x = streams[:, k * T:(k + 1) * T]
        y = streams[:, k * T + 1:(k + 1) * T + 1]
        out, state = module(eye[x.T], state)
        loss = torch.nn.functional.cross_entropy(decoder(out).reshape(-1, V), y.T.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        opt.step()
        state = tuple(s.detach() for s in state) if spec["cell"] == "lstm" else state.detach()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    with torch.no_grad():
        one = torch.zeros(L, 1, H)
        s1 = (one, one.clone()) if spec["cell"] == "lstm" else one
        c = torch.tensor([0])
        t0 = time.perf_counter()
        for _ in range(sample_chars):
            o, s1 = module(eye[c].view(1, 1, V), s1)
            p = torch.softmax(decoder(o[0, 0]) / 0.8, -1)
            c = torch.multinomial(p, 1)
        sample_cps = sample_chars / (time.perf_counter() - t0)
    return {"train_chars_per_s": T * B / step_s, "step_ms": step_s * 1e3,
            "sample_chars_per_s": sample_cps, "threads": threads, "torch": torch.__version__}


def train_torch_for(spec: dict, corpus: str | None, seconds: float, eval_every_s: float,
                    threads: int) -> list:
    """Train the same model as charlstm for ``seconds`` of training time, validating every
    ``eval_every_s`` seconds (validation time not counted) the way charlstm does: the whole
    validation text as one stream from zero state. Returns [(seconds, val_bpc), ...]."""
    import math

    import torch

    from .config import TrainConfig
    from .train import prepare_data

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = TrainConfig(corpus=(corpus,) if corpus else (), **spec)
    data = prepare_data(config)
    V = len(data.vocab)
    T, B, H, L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
    streams = torch.from_numpy(data.batches.streams.astype(np.int64))
    val = torch.from_numpy(np.asarray(data.val_ids).astype(np.int64))
    steps_per_epoch = data.batches.steps_per_epoch
    lstm = spec["cell"] == "lstm"
    module = {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN, "gru": torch.nn.GRU}[spec["cell"]](V, H, L)
    decoder = torch.nn.Linear(H, V)
    eye = torch.eye(V)
    params = list(module.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)

    def zero(batch):
        z = torch.zeros(L, batch, H)
        return (z, z.clone()) if lstm else z

    def validate():
        with torch.no_grad():
            out, _ = module(eye[val[:-1]].view(-1, 1, V), zero(1))
            loss = torch.nn.functional.cross_entropy(decoder(out[:, 0]), val[1:])
        return loss.item() / math.log(2)

    curve, trained, next_eval, k, state = [], 0.0, eval_every_s, 0, zero(B)
    while trained < seconds:
        t0 = time.perf_counter()
        if k == steps_per_epoch:
            k, state = 0, zero(B)
        x = streams[:, k * T:(k + 1) * T]
        y = streams[:, k * T + 1:(k + 1) * T + 1]
        out, state = module(eye[x.T], state)
        loss = torch.nn.functional.cross_entropy(decoder(out).reshape(-1, V), y.T.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        opt.step()
        state = tuple(s.detach() for s in state) if lstm else state.detach()
        k += 1
        trained += time.perf_counter() - t0
        if trained >= next_eval or trained >= seconds:
            curve.append((trained, validate()))
            next_eval += eval_every_s
    return curve
