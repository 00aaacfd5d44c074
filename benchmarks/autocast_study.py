"""Which bfloat16 storage makes an LSTM stall under PyTorch's CPU autocast?

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` nn.LSTM runs oneDNN's bfloat16 RNN
(aten::mkldnn_rnn_layer): its outputs, final h and final c come back in bfloat16 (every c_n
value is a bfloat16 number), and its gate products are bfloat16 in, float32 accumulated.
At M on tinyshakespeare one seed of four stalled near 3.5 bpc for hundreds of steps
(benchmarks/precision_quality.py). This study trains the same model, seeds and data as
bench_torch.TorchTwin, but with an LSTM written out step by step in float32 whose rounding
to bfloat16 is explicit (``x.to(bfloat16).float()``, whose gradient is rounded too, as a
bfloat16 product's backward operands are), so that one thing at a time can be made
bfloat16:

- ``products``: the operands of every matrix product (h, W_hh, the layer input, W_ih,
  the decoder's input and weight), as charlstm's ``--precision bfloat16`` does;
- ``+cell``: also the cell state c_t, at every step (and so the state carried between
  chunks);
- ``+gates``: also the products' results, the gate pre-activations and the logits (an
  autocast matmul returns bfloat16);
- ``all``: products, cell and gates together, as autocast's oneDNN layer stores them;
- ``float32``: nothing rounded.

Three more runs use PyTorch's own modules, to say which of them autocast hurts:
``autocast`` (nn.LSTM and the decoder under autocast, as bench_torch does),
``autocast-lstm`` (nn.LSTM alone under it) and ``autocast-decoder`` (the decoder alone).

Validation is float32 (the float32 master weights in nn.LSTM), as everywhere else.

    python benchmarks/autocast_study.py --corpus ../shared/data/tinyshakespeare.txt \
        --seeds 0 --variants float32 products +cell +gates all --out docs/quality/autocast-study.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODULE_VARIANTS = {  # what runs under torch.autocast, with PyTorch's own modules
    "autocast": {"lstm", "decoder"},
    "autocast-lstm": {"lstm"},
    "autocast-decoder": {"decoder"},
}
VARIANTS = {
    "float32": set(),
    "products": {"products"},
    "+cell": {"products", "cell"},
    "+gates": {"products", "gates"},
    "all": {"products", "cell", "gates"},
}


def run(corpus: str, seed: int, variant: str, steps: int, eval_every: int, threads: int) -> list:
    import torch

    from charlstm.tools.bench import CONFIGS
    from charlstm.tools.bench_torch import TorchTwin

    rounded = VARIANTS.get(variant, set())
    twin = TorchTwin(CONFIGS["M"], corpus, threads, seed)  # initial weights and data
    H, L, V, T = twin.H, twin.L, twin.V, twin.T
    bf16 = torch.bfloat16

    def r(x, what):
        return x.to(bf16).float() if what in rounded else x

    weights = {name: p for name, p in twin.module.named_parameters()}
    dec_w, dec_b = twin.decoder.weight, twin.decoder.bias

    def modules_forward(x, state):
        """PyTorch's own modules, each under autocast or not as the variant says."""
        under = MODULE_VARIANTS[variant]
        with torch.autocast("cpu", dtype=bf16, enabled="lstm" in under):
            out, state = twin.module(x, state)
        with torch.autocast("cpu", dtype=bf16, enabled="decoder" in under):
            logits = twin.decoder(out if "decoder" in under else out.float())
        return logits.float(), tuple(s.float() for s in state)

    def forward(x, state):
        """x [T, B, V] one-hot; state (h, c) [L, B, H] each; returns logits, new state."""
        if variant in MODULE_VARIANTS:
            return modules_forward(x, state)
        h_all, c_all = state
        inp = x
        new_h, new_c = [], []
        for k in range(L):
            w_ih, w_hh = weights[f"weight_ih_l{k}"], weights[f"weight_hh_l{k}"]
            bias = weights[f"bias_ih_l{k}"] + weights[f"bias_hh_l{k}"]
            if k == 0:  # a row lookup in charlstm: the one-hot product is exact anyway
                proj = inp @ w_ih.T
            else:
                proj = r(inp, "products") @ r(w_ih, "products").T
            h, c = h_all[k], c_all[k]
            outs = []
            for t in range(T):
                pre = r(proj[t] + r(h, "products") @ r(w_hh, "products").T, "gates") + bias
                i, f, g, o = pre.chunk(4, dim=1)
                c = r(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g), "cell")
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            inp = torch.stack(outs)
            new_h.append(h)
            new_c.append(c)
        logits = r(r(inp, "products") @ r(dec_w, "products").T, "gates") + dec_b
        return logits, (torch.stack(new_h), torch.stack(new_c))

    steps_per_epoch = twin.data.batches.steps_per_epoch
    state, k, curve = twin.zero(twin.B), 0, []
    for step in range(1, steps + 1):
        if k == steps_per_epoch:
            k, state = 0, twin.zero(twin.B)
        x = twin.streams[:, k * T:(k + 1) * T]
        y = twin.streams[:, k * T + 1:(k + 1) * T + 1]
        logits, state = forward(twin.eye[x.T], state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.T.reshape(-1))
        twin.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.params, twin.config.clip)
        twin.opt.step()
        state = tuple(s.detach() for s in state)
        k += 1
        if step % eval_every == 0 or step == steps:
            curve.append((step, twin.validate()))
            print(f"  {variant} seed {seed} step {step}: {curve[-1][1]:.4f} bpc "
                  f"(train {loss.item() / math.log(2):.3f})", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(MODULE_VARIANTS) + list(VARIANTS),
                    choices=list(MODULE_VARIANTS) + list(VARIANTS))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-steps", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    done = set()
    if out.exists():
        done = {(r["variant"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    for seed in a.seeds:
        for variant in a.variants:
            if (variant, seed) in done:
                continue
            t0 = time.perf_counter()
            curve = run(a.corpus, seed, variant, a.steps, a.eval_steps, a.threads)
            with open(out, "a") as f:
                f.write(json.dumps({"variant": variant, "seed": seed, "curve": curve,
                                    "wall_s": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
