"""One run over several MPI processes (--distributed mpi) with a real mpiexec: the rank-
order gradient sum, bit-identity with threads in one process and with resuming, and how
the job ends on SIGTERM and when a rank dies."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CHARLSTM, ROOT, assert_same_future, make_text, run_cli

pytest.importorskip("mpi4py", reason="the MPI tests need mpi4py and an MPI: pip install 'charlstm[mpi]'")
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")

TINY = ["--hidden-size", "16", "--num-layers", "2", "--seq-len", "16", "--batch-size", "6",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


def mpi(n, *args, timeout=300, check=True):
    proc = subprocess.run([MPIEXEC, "-n", str(n), *CHARLSTM, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpiexec -n {n} charlstm {' '.join(map(str, args))}: {proc.returncode}\n{proc.stderr}")
    return proc


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(8000))
    return path


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_ordered_sum_is_the_rank_order_sum(n):
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(ROOT / "tests" / "mpi_sum_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("equal") == n


def test_two_ranks_equal_two_threads_and_resume_equals_one_go(tmp_path, corpus):
    args = [*TINY, "--dropout", "0.1", "--eval-every", "20", "--threads", "1"]
    mpi(2, "train", corpus, *args, "--steps", "60", "--distributed", "mpi", "--out", tmp_path / "ranks")
    run_cli("train", corpus, *TINY, "--dropout", "0.1", "--eval-every", "20", "--threads", "2",
            "--steps", "60", "--out", tmp_path / "threads")
    assert_same_future(tmp_path / "threads" / "last.npz", tmp_path / "ranks" / "last.npz")
    with np.load(tmp_path / "ranks" / "last.npz", allow_pickle=False) as z:
        assert z["state.h"].shape == (2, 6, 16)  # the whole batch's state, gathered
    mpi(2, "train", corpus, *args, "--steps", "30", "--distributed", "mpi", "--out", tmp_path / "split")
    mpi(2, "resume", tmp_path / "split", "--steps", "60", "--distributed", "mpi", "--quiet")
    assert_same_future(tmp_path / "ranks" / "last.npz", tmp_path / "split" / "last.npz")


def _wait_for_checkpoint(run_dir, step=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if np.load(run_dir / "last.npz")["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("the run never saved")


def test_sigterm_stops_every_rank_with_143_and_the_checkpoint_saved(tmp_path, corpus):
    out = tmp_path / "run"
    job = subprocess.Popen([MPIEXEC, "-n", "2", *CHARLSTM, "train", str(corpus), *TINY, "--threads", "1",
                            "--steps", "1000000", "--save-every", "50", "--distributed", "mpi",
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoint(out, 50)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 143, err.decode()
    step = int(np.load(out / "last.npz")["step"])
    assert step >= 50
    mpi(2, "resume", out, "--steps", str(step + 10), "--distributed", "mpi", "--quiet")
    assert int(np.load(out / "last.npz")["step"]) == step + 10


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


@pytest.mark.skipif(sys.platform != "linux", reason="finds the ranks through /proc")
def test_a_dead_rank_ends_the_job_and_resume_continues(tmp_path, corpus):
    out = tmp_path / "run"
    job = subprocess.Popen([MPIEXEC, "-n", "2", *CHARLSTM, "train", str(corpus), *TINY, "--threads", "1",
                            "--steps", "1000000", "--save-every", "50", "--distributed", "mpi",
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoint(out, 50)
        rank0 = int((out / ".lock").read_text())  # rank 0 holds the run's lock
        proxy = _parent(rank0)  # mpiexec's proxy started every rank of this machine
        victim = next(p for p in (int(d) for d in os.listdir("/proc") if d.isdigit())
                      if p != rank0 and _parent(p) == proxy)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        job.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and waited < 10
    step = int(np.load(out / "last.npz")["step"])
    mpi(2, "resume", out, "--steps", str(step + 10), "--distributed", "mpi", "--quiet")
    assert int(np.load(out / "last.npz")["step"]) == step + 10


def test_an_error_on_the_ranks_is_one_line_and_ends_the_job(tmp_path):
    proc = mpi(2, "train", tmp_path / "missing.txt", *TINY, "--distributed", "mpi",
               "--out", tmp_path / "r", check=False, timeout=60)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mpiexec_without_the_flag_is_refused_before_any_rank_touches_the_run(tmp_path, corpus):
    out = tmp_path / "run"
    proc = mpi(2, "train", corpus, *TINY, "--steps", "5", "--out", out, check=False)
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.splitlines()  # rank 0 speaks for the job
    assert line.startswith("Error: this is one of 2 processes that mpiexec started")
    assert "add --distributed mpi" in line
    assert not out.exists()


def test_the_flag_without_a_launcher_is_refused_saying_how_to_start_it(tmp_path, corpus):
    out = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--steps", "5", "--distributed", "mpi", "--out", out,
                   check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert "`mpiexec -n N charlstm ... --distributed mpi`, or drop --distributed mpi" in line
    assert not out.exists()
    resumed = run_cli("resume", out, "--distributed", "mpi", check=False)
    assert resumed.returncode == 1 and "started alone" in resumed.stderr


@pytest.mark.parametrize("environ, seen", [
    ({"PMI_SIZE": "4", "PMI_RANK": "3"}, (4, 3, "mpiexec")),  # MPICH's Hydra, Intel MPI
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1"}, (2, 1, "mpiexec")),
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (8, 5, "srun")),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, None),  # a batch script: it runs once
    ({}, None),
])
def test_launchers_are_told_by_the_variables_they_set(environ, seen):
    from charlstm.parallel.ranks import launched_by

    assert launched_by(environ) == (None if seen is None else seen)
