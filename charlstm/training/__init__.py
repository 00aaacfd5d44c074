"""Training: the one configuration (config.py) and its TOML files (config_file.py), what
a time budget chooses (budget.py), starting and resuming runs (run.py), the loop
(loop.py), the optimizers and schedules (optim.py), and the run directory's lock
(lock.py)."""
