"""Measurement and diagnostics: speed (bench.py, bench_torch.py, bench_products.py),
gradient checks (gradcheck.py), how far gradients reach (gradflow.py), learning curves
(plot.py), TensorBoard events (tensorboard.py) and an n-gram baseline (baseline.py)."""
