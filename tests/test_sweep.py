"""charlstm sweep on real Dask clusters: a local one the command starts, and a scheduler
and a worker started as processes, as on a cluster."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_same_future, make_text, run_cli

pytest.importorskip("distributed", reason="the sweep tests need Dask: pip install 'charlstm[sweep]'")

SWEEP = """
[train]
corpus = ["{corpus}"]
num_layers = 1
seq_len = 16
batch_size = 4
steps = {steps}
save_every = {save_every}
blas = "openblas"
step_weights = "stored/stored"

[grid]
hidden_size = [8, 16]
lr = [0.002, 0.01]

[sweep]
out = "{out}"
"""


def _sweep_file(tmp_path, steps=30, save_every=200, grid=None):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(6000))
    text = SWEEP.format(corpus=corpus, steps=steps, save_every=save_every, out=tmp_path / "out")
    if grid is not None:
        text = text[:text.index("[grid]")] + grid + text[text.index("[sweep]"):]
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def _lines(out):
    return [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]


def test_a_grid_on_a_local_cluster_reports_and_never_trains_twice(tmp_path):
    path = _sweep_file(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("sweep", path, "--workers", "2", "--quiet")
    lines = _lines(out)
    assert len(lines) == 4 and all(r["status"] == "finished" and r["steps"] == 30 for r in lines)
    assert {(r["options"]["hidden_size"], r["options"]["lr"]) for r in lines} == \
        {(8, 0.002), (8, 0.01), (16, 0.002), (16, 0.01)}
    report = json.loads(run_cli("sweep", "--report", out, "--json").stdout)
    assert report[0]["metric"] == min(r["best_val_bpc"] for r in lines)
    assert proc.stdout.splitlines()[1].startswith(f"{report[0]['metric']:.4f}")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trial-*/last.npz")}
    again = run_cli("sweep", path, "--workers", "2")
    assert "4 finished before" in again.stderr and len(_lines(out)) == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("trial-*/last.npz")} == stamps


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker through /proc")
def test_a_trial_whose_worker_is_killed_resumes_to_the_same_checkpoint(tmp_path):
    path = _sweep_file(tmp_path, steps=4000, save_every=50, grid="[grid]\nhidden_size = [8]\n\n")
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", "1",
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        lock = None
        while time.monotonic() < deadline:
            runs = list(out.glob("trial-*"))
            if runs and (runs[0] / "last.npz").exists() and (runs[0] / ".lock").exists():
                if np.load(runs[0] / "last.npz")["step"] >= 200:
                    lock = runs[0] / ".lock"
                    break
            time.sleep(0.05)
        assert lock is not None, "the trial never got going"
        trainer = int(lock.read_text())
        worker = _parent_pid(trainer)
        os.kill(worker, signal.SIGKILL)  # the worker dies in the middle of the trial
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, stderr.decode()
    [result] = _lines(out)
    assert result["status"] == "finished" and result["steps"] == 4000
    run = out / result["trial"]
    assert "resume" in json.dumps(json.loads(run_cli("info", run / "last.npz", "--json").stdout)["history"])
    reference = tmp_path / "reference"
    run_cli("train", "--config", run / "trial.toml", "--out", reference, "--quiet")
    assert_same_future(reference / "last.npz", run / "last.npz")


def test_a_sweep_runs_on_a_scheduler_and_worker_started_apart(tmp_path):
    path = _sweep_file(tmp_path, grid="[grid]\nhidden_size = [8, 12]\n\n")
    address_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(address_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        worker = subprocess.Popen(["dask", "worker", address, "--nthreads", "1", "--nworkers", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_cli("sweep", path, "--scheduler", address, "--quiet", timeout=300)
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    lines = _lines(tmp_path / "out")
    assert sorted(r["options"]["hidden_size"] for r in lines) == [8, 12]
    assert all(r["status"] == "finished" for r in lines)


def test_a_bad_grid_and_a_missing_report_are_one_line_errors(tmp_path):
    path = _sweep_file(tmp_path, grid="[grid]\nhidden_size = [8, -1]\n\n")
    proc = run_cli("sweep", path, "--dry-run", check=False)
    assert proc.returncode == 1 and "hidden_size = -1" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("sweep", "--report", tmp_path / "nothing", check=False)
    assert proc.returncode == 1 and "holds no sweep.jsonl" in proc.stderr


def test_a_trial_that_keeps_failing_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = _sweep_file(tmp_path, grid='[grid]\nhidden_size = [8]\nencoding = ["utf-8", "utf-32"]\n\n')
    proc = run_cli("sweep", path, "--workers", "2", "--retries", "1", "--quiet", check=False)
    assert proc.returncode == 1 and "1 of 2 trials failed" in proc.stderr
    lines = {r["options"]["encoding"]: r for r in _lines(tmp_path / "out")}
    assert lines["utf-8"]["status"] == "finished"
    assert lines["utf-32"]["status"] == "failed" and "not valid utf-32" in lines["utf-32"]["reason"]


def test_a_rerun_tries_failed_trials_again_and_a_missing_corpus_stops_it_at_once(tmp_path):
    path = _sweep_file(tmp_path, grid='[grid]\nhidden_size = [8]\nencoding = ["utf-8", "utf-32"]\n\n')
    run_cli("sweep", path, "--workers", "2", "--retries", "0", "--quiet", check=False)
    again = run_cli("sweep", path, "--workers", "2", "--retries", "0", check=False)
    assert "2 trials, 1 finished before" in again.stderr and again.returncode == 1
    (tmp_path / "c.txt").unlink()
    t0 = time.monotonic()
    missing = run_cli("sweep", path, "--workers", "2", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr and time.monotonic() - t0 < 30


def _trials_still_running(out) -> bool:
    """Whether a trial process still holds its run directory's lock (lock.py: flock)."""
    import fcntl

    for path in out.glob("trial-*/.lock"):
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
    return False


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                              (signal.SIGHUP, True)],
                         ids=["ctrl-c", "kill", "terminal-closed"])
def test_a_stop_signal_ends_the_sweep_with_every_trial_saved_and_none_failed(tmp_path, signum, to_group):
    """Ctrl-C and a closed terminal signal the whole process group (sweep, workers,
    trials); `kill PID` the sweep alone, whose workers then stop their trials."""
    path = _sweep_file(tmp_path, steps=10_000_000, save_every=1_000_000,
                       grid="[grid]\nhidden_size = [8, 16]\n\n")
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", "2",
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (len(list(out.glob("trial-*/metrics.jsonl"))) == 2 and all(
                p.stat().st_size > 500 for p in out.glob("trial-*/metrics.jsonl"))):
            assert time.monotonic() < deadline and sweep.poll() is None, "the trials never got going"
            time.sleep(0.05)
        if to_group:
            os.killpg(sweep.pid, signum)
        else:
            sweep.send_signal(signum)
        stdout, stderr = sweep.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while _trials_still_running(out) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 128 + signum, stderr.decode()[-800:]
    assert b"Traceback" not in stderr, stderr.decode()[-800:]
    assert not _trials_still_running(out)
    for run in out.glob("trial-*"):  # each stopped where it logged last, its steps saved
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert np.load(run / "last.npz")["step"] == rows[-1]["step"] > 0
    recorded = _lines(out) if (out / "sweep.jsonl").exists() else []
    assert recorded == []  # no trial finished, and none is recorded as failed
