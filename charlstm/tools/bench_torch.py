"""The PyTorch side of `charlstm bench --compare-torch` and `--quality`: the same model
(one-hot input, nn.LSTM/nn.RNN/nn.GRU, Linear, softmax cross-entropy, Adam, clip 5,
truncated BPTT over the same streams, dropout where charlstm puts it, charlstm's own
learning-rate schedule), timed the same way. Imported only when torch is
installed; charlstm never depends on it."""
from __future__ import annotations

import math
import time

import numpy as np

from charlstm.model.cells import CELL_TABLE
from charlstm.training.optim import learning_rate


class TorchTwin:
    """charlstm's model and training step, written in PyTorch, on charlstm's own data."""

    def __init__(self, spec: dict, corpus: str | None, threads: int, seed: int = 0,
                 autocast: bool = False):
        """``autocast``: run the forward pass under ``torch.autocast("cpu",
        dtype=torch.bfloat16)``, what a PyTorch user with bfloat16 instructions runs: nn.LSTM
        then goes to oneDNN's bfloat16 RNN (aten::mkldnn_rnn_layer), whose outputs, final h
        and final c are bfloat16; the loss is taken in float32 and validation runs without
        autocast, as charlstm validates its float32 master weights."""
        import torch

        from charlstm.training.config import TrainConfig
        from charlstm.training.loop import prepare_data

        self.torch = torch
        self.autocast = autocast
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.config = TrainConfig(corpus=(corpus,) if corpus else (), **spec)
        self.data = prepare_data(self.config)
        self.V = V = len(self.data.vocab)
        self.T, self.B, self.H, self.L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
        self.lstm = CELL_TABLE[spec["cell"]].has_cell_state
        self.streams = torch.from_numpy(self.data.batches.streams.astype(np.int64))
        module_name = CELL_TABLE[spec["cell"]].torch_module
        if module_name is None:
            raise ValueError(f"PyTorch has no {spec['cell']} module to compare charlstm with")
        cls = getattr(torch.nn, module_name)
        # Dropout where charlstm's dropout.py puts it: between layers (nn.LSTM's own) and
        # on the last layer's output before the decoder.
        p = self.config.dropout
        self.module = cls(V, self.H, self.L, dropout=p if self.L > 1 else 0.0)
        self.output_dropout = torch.nn.Dropout(p)
        self.decoder = torch.nn.Linear(self.H, V)
        self.steps_taken = 0
        self.eye = torch.eye(V)
        self.params = list(self.module.parameters()) + list(self.decoder.parameters())
        self.opt = torch.optim.Adam(self.params, lr=self.config.lr)

    def state_dict(self) -> dict:
        """The weights under charlstm's names (``rnn.*``, ``decoder.*``), as NumPy arrays."""
        out = {f"rnn.{k}": v.detach().numpy().copy() for k, v in self.module.state_dict().items()}
        out.update({f"decoder.{k}": v.detach().numpy().copy()
                    for k, v in self.decoder.state_dict().items()})
        return out

    def validate(self) -> float:
        """Validation bpc the way charlstm measures it: the whole validation text as one
        stream from zero state."""
        torch = self.torch
        val = torch.from_numpy(np.asarray(self.data.val_ids).astype(np.int64))
        self.module.eval()  # no dropout
        with torch.no_grad():
            out, _ = self.module(self.eye[val[:-1]].view(-1, 1, self.V), self.zero(1))
            loss = torch.nn.functional.cross_entropy(self.decoder(out[:, 0]), val[1:])
        self.module.train()
        return loss.item() / math.log(2)

    def zero(self, batch: int):
        z = self.torch.zeros(self.L, batch, self.H)
        return (z, z.clone()) if self.lstm else z

    def step(self, k: int, state, elapsed: float | None = None):
        """One optimizer step on chunk k of an epoch, ``elapsed`` training seconds into
        the run (for a schedule over a time budget, as Trainer.train_step); returns the
        carried state."""
        T, V = self.T, self.V
        x = self.streams[:, k * T:(k + 1) * T]
        y = self.streams[:, k * T + 1:(k + 1) * T + 1]
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.autocast):
            out, state = self.module(self.eye[x.T], state)
            logits = self.decoder(self.output_dropout(out))
        loss = self.torch.nn.functional.cross_entropy(logits.float().reshape(-1, V),
                                                      y.T.reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, self.config.clip)
        lr = learning_rate(self.config, self.steps_taken, self.config.lr_horizon,
                           self.data.batches.steps_per_epoch, elapsed)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.steps_taken += 1
        # float() is a no-op in float32; under autocast the state comes back bfloat16.
        return tuple(s.detach().float() for s in state) if self.lstm else state.detach().float()


def worker_torch(spec: dict, corpus: str | None, steps: int, warmup: int, threads: int,
                 sample_chars: int, autocast: bool = False) -> dict:
    twin = TorchTwin(spec, corpus, threads, autocast=autocast)
    torch = twin.torch
    state, times = twin.zero(twin.B), []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        state = twin.step(k, state)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    with torch.no_grad():
        s1, c = twin.zero(1), torch.tensor([0])
        t0 = time.perf_counter()
        for _ in range(sample_chars):
            o, s1 = twin.module(twin.eye[c].view(1, 1, twin.V), s1)
            p = torch.softmax(twin.decoder(o[0, 0]) / 0.8, -1)
            c = torch.multinomial(p, 1)
        sample_cps = sample_chars / (time.perf_counter() - t0)
    return {"train_chars_per_s": twin.T * twin.B / step_s, "step_ms": step_s * 1e3,
            "sample_chars_per_s": sample_cps, "threads": threads, "torch": torch.__version__,
            "autocast": autocast}


def train_torch_steps(spec: dict, corpus: str | None, steps: int, eval_every: int,
                      threads: int, seed: int = 0, autocast: bool = False) -> list:
    """Train ``steps`` optimizer steps, validating every ``eval_every`` steps and at the
    end; returns [(step, val_bpc), ...]. Equal steps, so the comparison does not depend
    on how fast the machine is."""
    twin = TorchTwin(spec, corpus, threads, seed, autocast)
    steps_per_epoch = twin.data.batches.steps_per_epoch
    curve, k, state = [], 0, twin.zero(twin.B)
    for step in range(1, steps + 1):
        if k == steps_per_epoch:
            k, state = 0, twin.zero(twin.B)
        state = twin.step(k, state)
        k += 1
        if step % eval_every == 0 or step == steps:
            curve.append((step, twin.validate()))
    return curve


def train_torch_for(spec: dict, corpus: str | None, seconds: float, eval_every_s: float,
                    threads: int, seed: int = 0) -> list:
    """Train for ``seconds`` of training time, validating every ``eval_every_s`` seconds
    (validation time not counted) the way charlstm does: the whole validation text as one
    stream from zero state. Returns [(seconds, val_bpc), ...]."""
    twin = TorchTwin(spec, corpus, threads, seed)
    steps_per_epoch = twin.data.batches.steps_per_epoch
    validate = twin.validate

    curve, trained, next_eval, k, state = [], 0.0, eval_every_s, 0, twin.zero(twin.B)
    while trained < seconds:
        t0 = time.perf_counter()
        if k == steps_per_epoch:
            k, state = 0, twin.zero(twin.B)
        state = twin.step(k, state, trained)
        k += 1
        trained += time.perf_counter() - t0
        if trained >= next_eval or trained >= seconds:
            curve.append((trained, validate()))
            next_eval += eval_every_s
    return curve
