"""`charlstm bench`: training and sampling speed, measured, beside NumPy's GEMM and
(optionally) PyTorch on the same machine in the same run.

Each configuration runs in its own subprocess, so its peak RSS is its own and one
configuration's thread pools or caches do not disturb the next.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from charlstm.training.config import GATES
from charlstm.errors import UserError

CONFIGS = {
    "S": dict(cell="lstm", hidden_size=128, num_layers=1, seq_len=64, batch_size=32),
    "M": dict(cell="lstm", hidden_size=256, num_layers=2, seq_len=64, batch_size=32),
    "L": dict(cell="lstm", hidden_size=512, num_layers=2, seq_len=100, batch_size=64),
    "R": dict(cell="rnn", hidden_size=256, num_layers=1, seq_len=64, batch_size=32),
}
SAMPLE_CHARS = 2000
# How `bench --quality` trains both tools: 'budget', with the learning rate, cosine decay
# over the budget and dropout that `charlstm train --time` takes from the budget table for
# this text and budget (budget.py); 'constant', at the configuration's constant rate
# without dropout.
QUALITY_RECIPES = ("budget", "constant")


def quality_spec(config: str, recipe: str, corpus: str | None, seconds: float) -> dict:
    """The settings (TrainConfig fields) both tools train with in `bench --quality`:
    configuration ``config``'s model and batch, trained by ``recipe`` (QUALITY_RECIPES)
    for ``seconds`` of training. Raises ValueError for another recipe."""
    if recipe not in QUALITY_RECIPES:
        raise ValueError(f"unknown quality recipe {recipe!r}; expected one of {QUALITY_RECIPES}")
    spec = dict(CONFIGS[config])
    if recipe == "budget":
        from charlstm.training.budget import recipe_for
        from charlstm.training.config import TrainConfig
        from charlstm.training.loop import prepare_data

        data = prepare_data(TrainConfig(corpus=(corpus,) if corpus else (), **spec))
        chosen = recipe_for(len(data.train_ids), seconds).settings
        # The model and batch stay the configuration's: the comparison is of one model.
        spec.update({name: chosen[name] for name in ("lr", "lr_schedule", "lr_min", "dropout")},
                    lr_horizon_time=seconds)
    return spec


def flops_per_char(cell: str, H: int, L: int, V: int) -> float:
    """Matmul FLOPs of one training character: forward 2*G*H^2*(2L-1) + 2*H*V (layer 0's
    input projection is a row gather), backward twice the forward."""
    G = GATES[cell]
    return 3 * (2 * G * H * H * (2 * L - 1) + 2 * H * V)


def step_gemm_shapes(cell: str, H: int, L: int, V: int, T: int, B: int) -> list[tuple]:
    """(m, k, n, count) of every matrix product of one training step, as charlstm runs it."""
    G = GATES[cell]
    N = T * B
    shapes = [
        (B, H, G * H, 2 * T * L),          # recurrent product per step, forward and backward
        (N, H, V, 2),                      # decoder forward; decoder input gradient
        (V, N, H, 1),                      # decoder weight gradient
        (G * H, N, H, L),                  # weight_hh gradients
    ]
    if L > 1:
        shapes += [(N, H, G * H, L - 1),   # upper layers' input projection
                   (G * H, N, H, L - 1),   # their weight_ih gradient
                   (N, G * H, H, L - 1)]   # their input gradient
    return shapes


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def numpy_gemm_seconds(shapes) -> float:
    """Time NumPy's float32 GEMM needs for these products (medians per shape)."""
    total = 0.0
    rng = np.random.default_rng(0)
    for m, k, n, count in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        reps = max(3, min(50, int(2e8 / (2 * m * k * n))))
        np.dot(a, b, out=out)
        per = median_time(lambda: np.dot(a, b, out=out), reps)
        total += per * count
    return total


def numpy_square_gemm_gflops(n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    np.dot(a, a, out=out)
    return 2 * n ** 3 / median_time(lambda: np.dot(a, a, out=out), 5) / 1e9


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (run in subprocesses) ---------------------------------------------------------

def worker_charlstm(name: str, corpus: str | None, steps: int, warmup: int, threads: int,
                    blas: str = "auto", step_weights: str | None = None,
                    precision: str = "float32") -> dict:
    from charlstm.training.config import TrainConfig
    from charlstm.machine.cpu import resolve_precision
    from charlstm.kernels.blas import BLAS
    from charlstm.model.sample import Sampler
    from charlstm.training.loop import Trainer, prepare_data
    from charlstm.machine.tune import resolve

    spec = CONFIGS[name]
    config = TrainConfig(corpus=(corpus,) if corpus else (), threads=threads,
                         precision=resolve_precision(precision), **spec)
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), blas, step_weights)  # as `charlstm train` does
    trainer = Trainer(config, data)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    V = len(data.vocab)
    T, B, H, L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
    cps = T * B / step_s
    # Sampling before NumPy's GEMM reference: OpenBLAS's threads spin for about 0.1 s
    # after a multi-threaded product, and a sampler choosing its cores then (sample.py)
    # found the second core taken, where `charlstm sample`, a process of its own, does not.
    sampler = Sampler(trainer.to_checkpoint(0.0))
    rng = np.random.default_rng(0)
    sampler.prime("", rng)
    for _ in sampler.stream(100, 0.8, 0, rng):
        pass
    t0 = time.perf_counter()
    for _ in sampler.stream(SAMPLE_CHARS, 0.8, 0, rng):
        pass
    sample_cps = SAMPLE_CHARS / (time.perf_counter() - t0)
    gemm_s = numpy_gemm_seconds(step_gemm_shapes(spec["cell"], H, L, V, T, B))
    from charlstm.tools.bench_products import product_rates

    products = product_rates(config, V, -(-B // min(threads, B)))
    return {
        "config": name, **spec, "vocab": V, "threads": threads, "precision": config.precision,
        "blas": config.blas, "step_weights": config.step_weights, "blas_detail": BLAS.describe(),
        "train_chars_per_s": cps,
        "step_ms": step_s * 1e3,
        "gflops": flops_per_char(spec["cell"], H, L, V) * cps / 1e9,
        "numpy_gemm_ms": gemm_s * 1e3,
        "gemm_fraction": gemm_s / step_s,
        "sample_chars_per_s": sample_cps,
        "products": products,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_jit(cache_dir: str) -> dict:
    """Start-to-ready time of a training step and a sample, with the given cache."""
    t0 = time.perf_counter()
    from charlstm.training.config import TrainConfig
    from charlstm.model.sample import Sampler
    from charlstm.model.shards import default_threads
    from charlstm.training.loop import Trainer, prepare_data

    for cell in ("lstm", "rnn"):
        config = TrainConfig(cell=cell, hidden_size=16, num_layers=2, seq_len=8, batch_size=4,
                             threads=default_threads(4))
        trainer = Trainer(config, prepare_data(config))
        trainer.train_step()
        sampler = Sampler(trainer.to_checkpoint(0.0))
        rng = np.random.default_rng(0)
        sampler.prime("", rng)
        for _ in sampler.stream(5, 0.8, 0, rng):
            pass
    return {"seconds": time.perf_counter() - t0}


def train_charlstm_steps(spec: dict, corpus: str | None, steps: int, eval_every: int,
                         threads: int, seed: int = 0, torch_init: bool = False,
                         precision: str = "float32") -> list:
    """charlstm's side of an equal-steps comparison: the real Trainer for ``steps``
    steps, validated every ``eval_every`` steps and at the end. Returns [(step, val_bpc),
    ...]. ``torch_init``: start from PyTorch's initial weights of ``seed``."""
    from charlstm.training.config import TrainConfig
    from charlstm.machine.cpu import resolve_precision
    from charlstm.training.loop import Trainer, prepare_data
    from charlstm.machine.tune import resolve

    config = TrainConfig(corpus=(corpus,) if corpus else (), seed=seed, threads=threads,
                         precision=resolve_precision(precision), **spec)
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), "auto")
    trainer = Trainer(config, data)
    if torch_init:
        from charlstm.tools.bench_torch import TorchTwin

        for name, value in TorchTwin(spec, corpus, threads=1, seed=seed).state_dict().items():
            trainer.net.params[name][...] = value
    curve = []
    for step in range(1, steps + 1):
        trainer.train_step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, trainer.validate()))
    return curve


def train_charlstm_for(spec: dict, corpus: str | None, seconds: float, eval_every_s: float,
                       threads: int, seed: int = 0, torch_init: bool = False,
                       blas: str = "auto", precision: str = "float32") -> list:
    """charlstm's side of the equal-budget comparison: the real Trainer, validated every
    ``eval_every_s`` seconds of training time. Returns [(seconds, val_bpc), ...].

    ``torch_init``: start from the initial weights PyTorch draws with ``seed`` (the same
    distribution as charlstm's, other numbers), so that only the implementations differ.
    """
    from charlstm.training.config import TrainConfig
    from charlstm.training.loop import Trainer, prepare_data

    from charlstm.machine.cpu import resolve_precision
    from charlstm.machine.tune import resolve

    config = TrainConfig(corpus=(corpus,) if corpus else (), seed=seed, threads=threads,
                         precision=resolve_precision(precision), **spec)
    data = prepare_data(config)
    config, _ = resolve(config, len(data.vocab), blas)
    trainer = Trainer(config, data)
    if torch_init:
        from charlstm.tools.bench_torch import TorchTwin

        for name, value in TorchTwin(spec, corpus, threads=1, seed=seed).state_dict().items():
            trainer.net.params[name][...] = value
    curve, trained, next_eval = [], 0.0, eval_every_s
    while trained < seconds:
        t0 = time.perf_counter()
        trainer.train_step(trained)
        trained += time.perf_counter() - t0
        if trained >= next_eval or trained >= seconds:
            curve.append((trained, trainer.validate()))
            next_eval += eval_every_s
    return curve


# A worker's exit status when it refused the user's input (a UserError): its last line
# of stderr is the message, which the parent raises again as a UserError of its own.
USER_ERROR_EXIT = 3


def _run_worker(args: list[str], env=None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "charlstm.tools.bench", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if proc.returncode == USER_ERROR_EXIT:
        raise UserError(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_row(rows: list[dict]) -> dict:
    """Per-key medians of repeated measurements (numbers only; the rest from the first)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = float(np.median([r[key] for r in rows]))
    out["repeats"] = len(rows)
    return out


def time_first_sample_char(config: str = "M") -> float:
    """Seconds from starting `charlstm sample` (cached kernels) to its first character."""
    from charlstm.model.checkpoint import save
    from charlstm.training.config import TrainConfig
    from charlstm.training.loop import Trainer, prepare_data

    cfg = TrainConfig(**CONFIGS[config])
    trainer = Trainer(cfg, prepare_data(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        save(trainer.to_checkpoint(0.0), path)
        cmd = [sys.executable, "-m", "charlstm", "sample", str(path), "--length", "50", "--seed", "1"]
        times = []
        for _ in range(4):  # the first run may still compile the sampling kernel
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            proc.stdout.read(1)
            times.append(time.perf_counter() - t0)
            proc.stdout.read()
            proc.wait()
        return float(np.median(times[1:]))


def run_bench(configs, corpus: str | None, steps: int, warmup: int, compare_torch: bool,
              torch_threads: int, echo=print, repeat: int = 1, threads: int | None = None,
              blas: str = "auto", precisions=None) -> dict:
    """``threads``: charlstm's (None: one per core, at most the batch size); PyTorch uses
    ``torch_threads``. ``blas``: charlstm's, as ``train --blas`` takes it. ``precisions``:
    charlstm's (default float32, and bfloat16 where the CPU has its products); PyTorch
    runs both ways, float32 and under bfloat16 autocast, whatever the CPU. Every worker
    of a configuration runs in its own process, interleaved with the others, ``repeat``
    times; the rows hold medians."""
    from charlstm.tools.bench_products import bfloat16_peak_gflops, float32_peak_gflops
    from charlstm.machine.cpu import has_bf16_products
    from charlstm.model.shards import available_cores, default_threads

    if precisions is None:
        precisions = ("float32", "bfloat16") if has_bf16_products() else ("float32",)
    results = {"machine": machine_summary(), "configs": [], "corpus": corpus or "builtin:pydoc"}
    echo(format_machine(results["machine"]))
    cores = available_cores()
    results["numpy_square_gemm_gflops"] = numpy_square_gemm_gflops()
    results["peak_float32_gflops"] = float32_peak_gflops(cores)
    results["peak_bfloat16_gflops"] = bfloat16_peak_gflops(cores)
    echo(f"peaks on {cores} cores: float32 {results['peak_float32_gflops']:.0f} GFLOP/s, "
         f"bfloat16 {results['peak_bfloat16_gflops']:.0f} GFLOP/s (charlstm's register blocks on "
         f"L1-resident operands); NumPy's float32 GEMM on 2048x2048 matrices "
         f"{results['numpy_square_gemm_gflops']:.0f} GFLOP/s")
    torch_ok = False
    if compare_torch:
        try:
            import torch  # noqa: F401  (optional: only to measure against)
            torch_ok = True
        except ImportError:
            echo("torch is not importable: skipping the PyTorch comparison")
    corpus_args = ["--corpus", corpus] if corpus else []
    torch_ways = ("float32", "bfloat16") if torch_ok else ()
    for name in configs:
        ours = threads or default_threads(CONFIGS[name]["batch_size"])
        rows = {p: [] for p in precisions}
        torch_rows = {p: [] for p in torch_ways}
        for _ in range(repeat):  # interleaved, so drifts in machine load hit all alike
            for precision in precisions:
                rows[precision].append(_run_worker(
                    ["--worker", "charlstm", "--config", name, "--steps", str(steps), "--warmup",
                     str(warmup), "--threads", str(ours), "--blas", blas, "--precision",
                     precision] + corpus_args))
            for way in torch_ways:
                torch_rows[way].append(_run_worker(
                    ["--worker", "torch", "--config", name, "--steps", str(steps), "--warmup",
                     str(warmup), "--threads", str(torch_threads), "--precision", way]
                    + corpus_args))
        torch = {way: _median_row(r) for way, r in torch_rows.items()}
        base = None
        for precision in precisions:
            row = _median_row(rows[precision])
            if precision == "float32":
                base = row
            elif base is not None:
                row["vs_float32"] = row["train_chars_per_s"] / base["train_chars_per_s"]
            if torch:
                row["torch"] = torch
                for way, t in torch.items():
                    row[f"train_ratio_{way}"] = row["train_chars_per_s"] / t["train_chars_per_s"]
                # against PyTorch the same way: float32 against float32, bfloat16 against autocast
                same = torch.get(precision, torch["float32"])
                row["train_ratio"] = row["train_chars_per_s"] / same["train_chars_per_s"]
                row["sample_ratio"] = row["sample_chars_per_s"] / torch["float32"]["sample_chars_per_s"]
            results["configs"].append(row)
            echo(_format_row(row))
            echo(_format_products(row, results))
    with tempfile.TemporaryDirectory() as cache:
        cold = _run_worker(["--worker", "jit"], env={"NUMBA_CACHE_DIR": cache})
        warm = _run_worker(["--worker", "jit"], env={"NUMBA_CACHE_DIR": cache})
    results["jit_cold_s"], results["jit_cached_s"] = cold["seconds"], warm["seconds"]
    echo(f"JIT: first start {cold['seconds']:.1f} s (compiling), cached start {warm['seconds']:.1f} s")
    results["sample_first_char_s"] = time_first_sample_char()
    echo(f"`charlstm sample` (config M, cached kernels): first character after "
         f"{results['sample_first_char_s']:.2f} s")
    return results


def _format_products(row: dict, results: dict) -> str:
    """One line per product of the step: its GFLOP/s alone on one core, against one
    core's peak in the row's precision."""
    cores = results["machine"]["cores"] or 1
    peak = results[f"peak_{row['precision']}_gflops"] / cores
    lines = [f"  products of one shard's step ({row['precision']}; one core's peak "
             f"{peak:.0f} GFLOP/s):"]
    for p in row["products"]:
        lines.append(f"    {p['product']:<28} [{p['m']}x{p['k']}] x [{p['k']}x{p['n']}] x{p['count']}: "
                     f"{p['gflops']:6.1f} GFLOP/s ({p['gflops'] / peak:4.0%} of peak), "
                     f"{p['step_ms']:.2f} ms a step")
    return "\n".join(lines)


def run_quality(config: str, corpus: str | None, seconds: float, eval_every_s: float,
                torch_threads: int, echo=print, seed: int = 0, same_init: bool = False,
                threads: int | None = None, blas: str = "auto", recipe: str = "budget") -> dict:
    """Validation bpc against training seconds, charlstm and PyTorch, equal budgets, both
    trained by ``recipe`` (QUALITY_RECIPES; see quality_spec).
    ``same_init``: charlstm starts from PyTorch's initial weights of ``seed``.
    ``threads``: charlstm's, as in run_bench."""
    from charlstm.training.config import TrainConfig
    from charlstm.model.shards import default_threads

    spec = quality_spec(config, recipe, corpus, seconds)
    echo(f"both tools: {config} ({spec['cell']} {spec['num_layers']}x{spec['hidden_size']}, "
         f"batch {spec['batch_size']}x{spec['seq_len']}), recipe '{recipe}': "
         + (f"lr {spec['lr']:g}, cosine to {spec['lr_min']:g} over {seconds:g} s, dropout {spec['dropout']:g}"
            if recipe == "budget" else f"lr {TrainConfig.lr:g}, constant, no dropout"))
    args = ["--config", config, "--seconds", str(seconds), "--eval-every", str(eval_every_s),
            "--seed", str(seed), "--recipe", recipe]
    args += ["--corpus", corpus] if corpus else []
    threads = threads or default_threads(CONFIGS[config]["batch_size"])
    ours = _run_worker(["--worker", "quality-charlstm", "--threads", str(threads), "--blas", blas] + args
                       + (["--torch-init"] if same_init else []))["curve"]
    echo(_curve_summary("charlstm:", ours))
    theirs = _run_worker(["--worker", "quality-torch", "--threads", str(torch_threads)] + args)["curve"]
    echo(_curve_summary("PyTorch: ", theirs))
    return {"config": config, **spec, "recipe": recipe, "seconds": seconds, "seed": seed,
            "same_init": same_init, "threads": threads, "torch_threads": torch_threads,
            "charlstm": ours, "torch": theirs,
            "machine": machine_summary(), "corpus": corpus or "builtin:pydoc"}


def _curve_summary(name: str, curve: list) -> str:
    """The last validation of a [(seconds, bpc), ...] curve and its best one (what a run
    that keeps its best checkpoint, as charlstm's best.npz, ends with)."""
    best = min(curve, key=lambda point: point[1])
    return (f"{name} validation {curve[-1][1]:.4f} bpc after {curve[-1][0]:.0f} s; "
            f"best {best[1]:.4f} bpc, at {best[0]:.0f} s")


def _format_row(row: dict) -> str:
    text = (f"{row['config']} {row.get('precision', 'float32')}: {row['cell']} "
            f"H={row['hidden_size']} L={row['num_layers']} T={row['seq_len']} B={row['batch_size']}, "
            f"{row['threads']} thread{'s' if row['threads'] != 1 else ''}, "
            f"--blas {row['blas']} --step-weights {row['step_weights']}: "
            f"{row['train_chars_per_s']:,.0f} chars/s, "
            f"{row['gflops']:.1f} GFLOP/s, {row['gemm_fraction']:.2f} of NumPy GEMM time, "
            f"sampling {row['sample_chars_per_s']:,.0f} chars/s, peak RSS {row['peak_rss_mb']:.0f} MB")
    if "vs_float32" in row:
        text += f"; x{row['vs_float32']:.2f} charlstm's float32"
    if "torch" in row:
        t = row["torch"]
        text += (f"; PyTorch float32 {t['float32']['train_chars_per_s']:,.0f} chars/s "
                 f"(x{row['train_ratio_float32']:.2f})")
        if "bfloat16" in t:
            text += (f", bfloat16 autocast {t['bfloat16']['train_chars_per_s']:,.0f} chars/s "
                     f"(x{row['train_ratio_bfloat16']:.2f})")
        text += (f"; sampling: PyTorch {t['float32']['sample_chars_per_s']:,.0f} "
                 f"(x{row['sample_ratio']:.1f})")
    return text


def machine_summary() -> dict:
    cpu = "unknown"
    flags = set()
    ids = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            for key in ("vendor_id", "cpu family", "model"):
                if line.split(":", 1)[0].strip() == key and key not in ids:
                    ids[key] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    # A virtual machine may name the CPU vaguely ("AMD EPYC"); family and model say which.
    if ids:
        cpu += f" ({ids.get('vendor_id', '?')} family {ids.get('cpu family', '?')} model {ids.get('model', '?')})"
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd,
            "amx": bool({"amx_tile", "amx_bf16", "amx_int8"} & flags),
            "blas_libraries": blas_library_summary(),
            "python": sys.version.split()[0], "numpy": np.__version__}


def blas_library_summary() -> dict:
    """Each installed BLAS charlstm can use, with its version and the kernels it runs here."""
    from charlstm.kernels import blas_libraries

    return {name: blas_libraries.load(name).describe() for name in blas_libraries.available()}


def format_machine(machine: dict) -> str:
    libs = "; ".join(f"{name}: {text}" for name, text in machine["blas_libraries"].items())
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['simd']}, "
            f"AMX {'yes' if machine['amx'] else 'no'}; BLAS {libs or 'none found'}")


def _main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m charlstm.tools.bench")
    ap.add_argument("--worker", choices=["charlstm", "torch", "jit", "quality-charlstm",
                                         "quality-torch", "steps-charlstm", "steps-torch"],
                    required=True)
    ap.add_argument("--precision", default="float32",
                    help="charlstm's precision; for the torch workers, bfloat16 is autocast")
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--eval-steps", type=int, default=250)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--eval-every", type=float, default=30.0)
    ap.add_argument("--config", default="M")
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-init", action="store_true")
    ap.add_argument("--recipe", choices=QUALITY_RECIPES, default="budget")
    ap.add_argument("--blas", default="auto")
    ap.add_argument("--step-weights", default=None)
    a = ap.parse_args(argv)
    try:
        out = _run_as_worker(a)
    except UserError as error:  # the parent says it, once, as the CLI says any other
        print(error, file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    print(json.dumps(out))


def _run_as_worker(a) -> dict:
    if a.worker == "charlstm":
        out = worker_charlstm(a.config, a.corpus, a.steps, a.warmup, a.threads, a.blas,
                              a.step_weights, a.precision)
    elif a.worker == "torch":
        from charlstm.tools.bench_torch import worker_torch
        out = worker_torch(CONFIGS[a.config], a.corpus, a.steps, a.warmup, a.threads, SAMPLE_CHARS,
                           autocast=a.precision == "bfloat16")
        out["peak_rss_mb"] = _peak_rss_mb()
    elif a.worker == "steps-charlstm":
        out = {"curve": train_charlstm_steps(CONFIGS[a.config], a.corpus, a.train_steps,
                                             a.eval_steps, a.threads, a.seed, a.torch_init,
                                             a.precision)}
    elif a.worker == "steps-torch":
        from charlstm.tools.bench_torch import train_torch_steps
        out = {"curve": train_torch_steps(CONFIGS[a.config], a.corpus, a.train_steps,
                                          a.eval_steps, a.threads, a.seed,
                                          autocast=a.precision == "bfloat16")}
    elif a.worker == "quality-charlstm":
        spec = quality_spec(a.config, a.recipe, a.corpus, a.seconds)
        out = {"curve": train_charlstm_for(spec, a.corpus, a.seconds, a.eval_every,
                                           a.threads, a.seed, a.torch_init, a.blas, a.precision)}
    elif a.worker == "quality-torch":
        from charlstm.tools.bench_torch import train_torch_for
        out = {"curve": train_torch_for(quality_spec(a.config, a.recipe, a.corpus, a.seconds),
                                        a.corpus, a.seconds, a.eval_every, a.threads, a.seed)}
    else:
        out = worker_jit(os.environ.get("NUMBA_CACHE_DIR", ""))
    return out


if __name__ == "__main__":
    _main()
