"""Validation bpc after the same number of steps (not seconds), charlstm and PyTorch.

    python benchmarks/per_step_quality.py --steps 600 --corpus ../shared/data/tinyshakespeare.txt

Config M, Adam 2e-3, clip 5, the same streams; separates what a step learns from how
fast steps run. Needs torch (only to compare).
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.bench import CONFIGS  # noqa: E402
from charlstm.bench_torch import _TorchTwin  # noqa: E402
from charlstm.config import TrainConfig  # noqa: E402
from charlstm.train import Trainer, prepare_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--config", default="M", choices=sorted(CONFIGS))
    a = ap.parse_args()
    spec = CONFIGS[a.config]
    config = TrainConfig(corpus=(a.corpus,) if a.corpus else (), **spec)
    trainer = Trainer(config, prepare_data(config))
    bits = [trainer.train_step()[0] for _ in range(a.steps)]
    print(f"charlstm {a.steps} steps: train bpc (last 50) {np.mean(bits[-50:]):.4f}, "
          f"validation {trainer.validate():.4f}")

    twin = _TorchTwin(spec, a.corpus, threads=2)
    torch = twin.torch
    spe = twin.data.batches.steps_per_epoch
    state = twin.zero(twin.B)
    for s in range(a.steps):
        if s % spe == 0:
            state = twin.zero(twin.B)
        state = twin.step(s % spe, state)
    val = torch.from_numpy(np.asarray(twin.data.val_ids).astype(np.int64))
    with torch.no_grad():
        out, _ = twin.module(twin.eye[val[:-1]].view(-1, 1, twin.V), twin.zero(1))
        vb = torch.nn.functional.cross_entropy(twin.decoder(out[:, 0]), val[1:]).item() / math.log(2)
    print(f"PyTorch  {a.steps} steps: validation {vb:.4f}")


if __name__ == "__main__":
    main()
