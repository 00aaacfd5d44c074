"""Interruptions and faults: signals, SIGKILL in the middle of saves, a full disk, NaN."""
import json
import random
import resource
import signal
import subprocess
import time

import numpy as np
import pytest

from charlstm.model import checkpoint as ckpt_io
from conftest import CHARLSTM, make_text, run_cli

TINY = ["--hidden-size", "8", "--num-layers", "1", "--seq-len", "8", "--batch-size", "2", "--quiet",
        # the tuner (tests/test_blas_choice.py) would add seconds to every run here
        "--blas", "openblas", "--step-weights", "stored/stored"]


def start_training(corpus, run, *extra, preexec_fn=None):
    return subprocess.Popen(
        [*CHARLSTM, "train", str(corpus), *TINY, "--out", str(run), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def wait_for_step(run, step, timeout=120):
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists():
            # Only whole lines: the process may be writing the last one right now.
            lines = metrics.read_text().split("\n")[:-1]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(make_text(100_000))
    return p


def test_sigterm_saves_and_exits_143(tmp_path, corpus):
    run = tmp_path / "run"
    proc = start_training(corpus, run, "--steps", "10000000", "--log-every", "1", "--save-every", "1000000")
    wait_for_step(run, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    ckpt = ckpt_io.load(run / "last.npz")
    assert ckpt.step >= 3
    run_cli("resume", run, "--steps", str(ckpt.step + 2), "--quiet")
    assert ckpt_io.load(run / "last.npz").step == ckpt.step + 2


def test_sigkill_at_random_moments_never_breaks_the_checkpoint(tmp_path, corpus):
    """Kill a training process that saves every step, many times, at random moments:
    last.npz is always a complete checkpoint and the run always resumes."""
    run = tmp_path / "run"
    rng = random.Random(0)
    run_cli("train", corpus, *TINY, "--steps", "1", "--out", run)
    previous_step = 1
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [*CHARLSTM, "resume", str(run), "--steps", "100000000",
             "--save-every", "1", "--log-every", "1", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_step(run, previous_step + 1)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        kills += 1
        ckpt = ckpt_io.load(run / "last.npz")  # complete and valid, or this raises
        assert ckpt.step >= previous_step
        assert np.all(np.isfinite(ckpt.params.flat))
        previous_step = ckpt.step
    assert kills == 12
    run_cli("resume", run, "--steps", str(previous_step + 1), "--quiet")
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_error_during_save_keeps_the_previous_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", run)
    before = (run / "last.npz").read_bytes()
    # Files may not grow past half a checkpoint: the next save fails midway, as on a full disk.
    proc = subprocess.run(
        [*CHARLSTM, "resume", str(run), "--steps", "4", "--quiet"],
        capture_output=True, text=True, preexec_fn=_limit_file_size(len(before) // 2), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "previous checkpoint is kept" in proc.stderr
    assert (run / "last.npz").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_divergence_stops_with_a_clear_message_and_keeps_good_weights(tmp_path, corpus):
    run2 = tmp_path / "run2"
    # Absurd steps overflow float32 within a few updates.
    proc = run_cli("train", corpus, *TINY, "--steps", "500", "--lr", "1e38", "--clip", "0",
                   "--optimizer", "sgd", "--save-every", "1", "--out", run2, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "diverged at step" in proc.stderr and "--lr" in proc.stderr
    ckpt = ckpt_io.load(run2 / "last.npz")  # the loader itself refuses non-finite weights
    assert np.all(np.isfinite(ckpt.params.flat))
