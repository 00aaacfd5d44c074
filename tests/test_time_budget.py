"""A learning-rate schedule that follows a --time budget: cosine over the training time,
saved with the run so that resume continues the same curve."""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.training.optim import learning_rate
from conftest import CHARLSTM, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored"]


def test_cosine_over_time_follows_the_elapsed_fraction():
    config = TrainConfig(lr=1.0, lr_min=0.1, lr_schedule="cosine", lr_horizon_time=100.0)
    assert learning_rate(config, 10, 0, 10, elapsed=0.0) == pytest.approx(1.0)
    assert learning_rate(config, 10, 0, 10, elapsed=50.0) == pytest.approx(0.55)
    assert learning_rate(config, 10, 0, 10, elapsed=100.0) == pytest.approx(0.1)
    assert learning_rate(config, 10, 0, 10, elapsed=500.0) == pytest.approx(0.1)
    # a step horizon, when there is one, wins over the time horizon
    assert learning_rate(config, 50, 100, 10, elapsed=0.0) == pytest.approx(0.55)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.alone
def test_time_alone_anneals_over_the_budget_and_resume_continues_the_curve(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000))
    out = tmp_path / "run"
    proc = subprocess.Popen([*CHARLSTM, "train", str(corpus), *TINY, "--time", "6s",
                             "--lr-schedule", "cosine", "--log-every", "5", "--quiet",
                             "--out", str(out)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # stop it about halfway through its budget
            rows = _rows(out) if (out / "metrics.jsonl").exists() else []
            if rows and rows[-1]["elapsed"] > 2.5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    horizon = info["config"]["lr_horizon_time"]
    assert 4.0 < horizon < 6.0  # the budget less start-up
    stopped = info["elapsed_seconds"]
    assert stopped < 0.8 * horizon
    run_cli("resume", out, "--quiet")  # no budget: to the end of the schedule
    rows = _rows(out)
    lrs = [r["lr"] for r in rows]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))  # one falling curve across the resume
    assert lrs[-1] < 0.15 * 2e-3 and rows[-1]["elapsed"] == pytest.approx(horizon, abs=1.0)
    later = run_cli("resume", out, check=False)
    assert later.returncode == 1 and "already spent its time budget" in later.stderr


def test_the_time_horizon_stays_out_of_run_files(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    out = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--time", "2s", "--lr-schedule", "cosine", "--quiet", "--out", out)
    toml = run_cli("info", out / "last.npz", "--toml").stdout
    assert "lr_horizon_time" not in toml and 'lr_schedule = "cosine"' in toml
    with np.load(out / "last.npz", allow_pickle=False) as z:
        assert json.loads(z["config"].item())["hyperparameters"]["lr_horizon_time"] > 0


def test_patience_stops_the_run_and_resume_respects_and_changes_it(tmp_path):
    from charlstm.training.loop import validations_without_improvement

    nan = float("nan")
    rows = [[s, 0, 0, v, 0, 0, 0, 0] for s, v in enumerate([3.0, nan, 2.5, 2.45, 2.6, nan, 2.44])]
    assert validations_without_improvement(rows, 0.1) == (3, 2.5)
    assert validations_without_improvement(rows, 0.0) == (0, 2.44)
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(8000))
    out = tmp_path / "run"
    # A min-delta no validation can meet: the first score is the best, then two misses.
    proc = run_cli("train", corpus, *TINY, "--eval-every", "1", "--patience", "2",
                   "--min-delta", "100", "--steps", "50", "--out", out)
    assert "stopped early: 2 validations in a row" in proc.stderr
    assert np.load(out / "last.npz")["step"] == 3
    refused = run_cli("resume", out, check=False)
    assert refused.returncode == 1 and "--patience" in refused.stderr
    run_cli("resume", out, "--patience", "4", "--quiet")
    assert np.load(out / "last.npz")["step"] == 5  # two more misses make four


def test_step_pace_scales_the_validation_estimate_by_sustained_slowdown_only():
    from charlstm.training.time_budget import StepPace

    pace = StepPace(window=5, bucket_seconds=0)  # every step a bucket of its own
    pace.validation_timed()  # before a full window: the reference is the first full one
    assert pace.slowdown() == 1.0
    for _ in range(5):
        pace.add(0.010)
    assert pace.reference == pytest.approx(0.010) and pace.slowdown() == 1.0
    pace.add(0.500)  # one slow step (a page fault, the collector) changes nothing
    assert pace.slowdown() == 1.0
    for _ in range(3):
        pace.add(0.030)  # the machine became busy: three of the last five steps
    assert pace.slowdown() == pytest.approx(3.0)
    for _ in range(5):
        pace.add(0.005)  # faster than when timed: never less than the timing itself
    assert pace.slowdown() == 1.0
    pace.validation_timed()  # a new timing is the new reference
    for _ in range(5):
        pace.add(0.010)
    assert pace.slowdown() == pytest.approx(2.0)


def test_step_pace_of_a_tiny_model_reads_a_burst_of_load_as_a_burst():
    """1 ms steps: a burst of 30 slow steps (0.15 s) is a few buckets of a window that
    spans half a second, and changes nothing; the same load sustained does."""
    from charlstm.training.time_budget import StepPace

    pace = StepPace()
    for _ in range(1000):
        pace.add(0.001)
    pace.validation_timed()
    for _ in range(30):
        pace.add(0.005)
    assert pace.slowdown() == pytest.approx(1.0)  # in the middle of the burst
    for _ in range(150):
        pace.add(0.005)
    assert pace.slowdown() == pytest.approx(5.0, rel=0.1)
