"""More than one core or machine: hand-offs to a worker thread (handoff.py), MPI ranks
(ranks.py) and telling a launcher's processes (launchers.py), and sweeps on Dask
(sweep.py)."""
