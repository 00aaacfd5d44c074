"""Validation bpc after the same number of steps (not seconds), charlstm and PyTorch.

    python benchmarks/per_step_quality.py --steps 600 --seeds 0 1 2 \\
        --corpus ../shared/data/tinyshakespeare.txt

Config M, Adam 2e-3, clip 5, the same streams; separates what a step learns from how
fast steps run. For each seed it trains three models: PyTorch from torch.manual_seed(seed);
charlstm from its own initialisation with --seed seed; and charlstm started from exactly
PyTorch's initial weights of that seed. If the last two agree and the first differs,
the gap between the tools is the spread of initial weights, not the training step.
Needs torch (only to compare).
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm.tools.bench import CONFIGS  # noqa: E402
from charlstm.tools.bench_torch import TorchTwin  # noqa: E402
from charlstm.training.config import TrainConfig  # noqa: E402
from charlstm.model.shards import default_threads  # noqa: E402
from charlstm.training.loop import Trainer, prepare_data  # noqa: E402
from charlstm.machine.tune import resolve  # noqa: E402


def train_charlstm(config, data, steps, init=None):
    trainer = Trainer(config, data)
    if init is not None:
        for name, value in init.items():
            trainer.net.params[name][...] = value
    for _ in range(steps):
        trainer.train_step()
    return trainer.validate()


def train_torch(spec, corpus, steps, seed):
    twin = TorchTwin(spec, corpus, threads=2, seed=seed)
    spe = twin.data.batches.steps_per_epoch
    state = twin.zero(twin.B)
    for s in range(steps):
        if s % spe == 0:
            state = twin.zero(twin.B)
        state = twin.step(s % spe, state)
    return twin.validate()


def summary(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"mean {statistics.mean(values):.4f}  sd {sd:.4f}  ({', '.join(f'{v:.4f}' for v in values)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--config", default="M", choices=sorted(CONFIGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="charlstm's shards (default: one per core, as the CLI)")
    ap.add_argument("--blas", default="openblas", help="charlstm's BLAS, as train --blas")
    ap.add_argument("--step-weights", default=None, help="as train --step-weights")
    a = ap.parse_args()
    spec = CONFIGS[a.config]
    threads = a.threads or default_threads(spec["batch_size"])
    config = TrainConfig(corpus=(a.corpus,) if a.corpus else (), threads=threads, **spec)
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), a.blas, a.step_weights)
    results = {"PyTorch": [], "charlstm, own init": [], "charlstm, PyTorch's init": []}
    for seed in a.seeds:
        torch_init = TorchTwin(spec, a.corpus, threads=2, seed=seed).state_dict()
        row = {
            "PyTorch": train_torch(spec, a.corpus, a.steps, seed),
            "charlstm, own init": train_charlstm(config.replace(seed=seed), data, a.steps),
            "charlstm, PyTorch's init": train_charlstm(config, data, a.steps, torch_init),
        }
        for key, value in row.items():
            results[key].append(value)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    print(f"validation bpc after {a.steps} steps of config {a.config}:")
    for key, values in results.items():
        print(f"  {key:<26} {summary(values)}")


if __name__ == "__main__":
    main()
