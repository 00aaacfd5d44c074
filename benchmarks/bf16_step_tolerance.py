"""How far is one bfloat16 training step from the same step in float32?

A model of config M's shape (lstm 2x256, batch 32x64) on real text: the trained
weights of a run directory (given) or PyTorch-like initial weights, the same chunk and
carried state through both precisions. Reports the loss difference (bits per
character) and, per gradient tensor, the relative difference ||g_bf16 - g_f32|| /
||g_f32||, and the cosine between the two whole gradients.

    python benchmarks/bf16_step_tolerance.py --corpus ../shared/data/tinyshakespeare.txt
    python benchmarks/bf16_step_tolerance.py --corpus ../shared/data/tinyshakespeare.txt --run runs/m
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from charlstm.data.corpus import Vocab
    from charlstm.model import checkpoint as ckpt_io
    from charlstm.model.network import Network
    from charlstm.model.parameters import init_params
    from charlstm.training.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--run", help="a run directory whose last.npz weights to use")
    ap.add_argument("--chunks", type=int, default=8, help="chunks (steps) to compare")
    a = ap.parse_args()
    text = Path(a.corpus).read_text(encoding="utf-8")
    if a.run:
        ckpt = ckpt_io.load(Path(a.run) / "last.npz")
        vocab, base = ckpt.vocab, ckpt.config
        params32 = ckpt.params
    else:
        vocab = Vocab.from_text(text)
        base = TrainConfig(hidden_size=256, num_layers=2, batch_size=32, seq_len=64)
        params32 = init_params(base, len(vocab), np.random.default_rng(0))
    ids = vocab.encode(text)
    B, T = base.batch_size, base.seq_len
    f32 = Network(base.replace(precision="float32", threads=1), len(vocab), params32)
    bf16 = Network(base.replace(precision="bfloat16", bf16_products="panels/panels", threads=1),
                   len(vocab), params32)
    rng = np.random.default_rng(1)
    loss_diffs, rel, cosines = [], {}, []
    for _ in range(a.chunks):
        start = rng.integers(0, len(ids) - B * (T + 1))
        block = ids[start:start + B * (T + 1)].reshape(B, T + 1)
        inputs, targets = block[:, :-1], block[:, 1:]
        states = [f32.zero_state(B), bf16.zero_state(B)]
        loss32 = f32.loss_and_grad(inputs, targets, states[0])
        loss16 = bf16.loss_and_grad(inputs, targets, states[1])
        loss_diffs.append((loss16 - loss32) / math.log(2))
        g32, g16 = f32.grads.flat.astype(np.float64), bf16.grads.flat.astype(np.float64)
        cosines.append(float(g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))))
        for name, view in f32.grads.items():
            other = bf16.grads[name]
            rel.setdefault(name, []).append(
                float(np.linalg.norm(other - view) / (np.linalg.norm(view) + 1e-30)))
    print(f"{a.chunks} chunks of {B}x{T}, {'weights of ' + a.run if a.run else 'initial weights'}")
    print(f"loss, bf16 - f32: mean {np.mean(loss_diffs):+.2e} bpc, largest |.| "
          f"{np.max(np.abs(loss_diffs)):.2e} bpc")
    print(f"gradient cosine: min {min(cosines):.6f}")
    for name, values in rel.items():
        print(f"  {name:28s} relative difference: median {np.median(values):.2e}, max {max(values):.2e}")


if __name__ == "__main__":
    main()
