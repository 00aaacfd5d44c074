"""Ends outside the happy path, on the real command with real signals: a closed terminal
or SSH session (SIGHUP), SIGTERM and Ctrl-C reach every long-running command, and
output that cannot be written (closed, a reader that went away, a terminal that hung
up) never costs a run its training."""
import json
import os
import pty
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import CHARLSTM, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored"]
STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
SIGNAL_IDS = ["SIGINT", "SIGTERM", "SIGHUP"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("hangups") / "c.txt"
    path.write_text(make_text(20_000))
    return path


@pytest.fixture(scope="module")
def run(corpus):
    out = corpus.parent / "run"
    run_cli("train", corpus, *TINY, "--steps", "20", "--quiet", "--out", out)
    return out


def _logged_step(run_dir) -> int:
    """The last step metrics.jsonl holds (0 before the first line)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _wait_for_logged_step(run_dir, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while _logged_step(run_dir) < step:
        assert proc.poll() is None, f"the run ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "the run never logged"
        time.sleep(0.05)


def _saved_step(run_dir) -> int:
    with np.load(run_dir / "last.npz", allow_pickle=False) as z:
        return int(z["step"])


def _long_run(corpus, out):
    """A run that would go on for minutes and saves only at its end (a large
    --save-every): what a stop keeps is what the stop itself saved."""
    return [*CHARLSTM, "train", str(corpus), *TINY, "--steps", "10000000", "--save-every", "1000000",
            "--log-every", "10", "--eval-every", "0", "--out", str(out)]


@pytest.mark.parametrize("signum", STOPS, ids=SIGNAL_IDS)
def test_a_stop_signal_finishes_the_step_and_saves_it(corpus, tmp_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen(_long_run(corpus, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_logged_step(out, 200, proc)
        proc.send_signal(signum)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err[-500:]
    assert "Traceback" not in err and "(stopped by signal)" in err
    assert _saved_step(out) >= 200 and _saved_step(out) == _logged_step(out)


def _drain(fd):
    """Read a pseudo-terminal's output until it closes (as a terminal window shows it)."""
    def read():
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("hangup", [True, False], ids=["SIGHUP", "nohup"])
def test_closing_the_terminal_keeps_the_run(corpus, tmp_path, hangup):
    """The window or SSH session of a run closes: its output then fails with EIO, and a
    SIGHUP arrives, unless the run was started with nohup (SIGHUP ignored), when it
    trains on to its budget without a terminal."""
    out = tmp_path / "run"
    master, slave = pty.openpty()
    command = _long_run(corpus, out)
    if not hangup:
        command[command.index("10000000")] = "3000"
    # SIGHUP ignored as nohup leaves it, the output still on the terminal (nohup itself
    # would move it to nohup.out).
    ignore = None if hangup else (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=ignore)
    os.close(slave)
    _drain(master)
    try:
        _wait_for_logged_step(out, 200, proc)
        os.close(master)  # the terminal goes away: writes to it now fail with EIO
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if hangup:
        assert proc.returncode == 128 + signal.SIGHUP
        assert _saved_step(out) >= 200 and _saved_step(out) == _logged_step(out)
    else:
        assert proc.returncode == 0 and _saved_step(out) == 3000


def test_a_run_with_its_output_closed_trains_to_its_budget_and_saves(corpus, tmp_path):
    out = tmp_path / "run"
    command = " ".join([*CHARLSTM, "train", str(corpus), *TINY, "--steps", "300", "--out", str(out)])
    proc = subprocess.run(f"{command} >&- 2>&-", shell=True, timeout=300)
    assert proc.returncode == 0
    assert _saved_step(out) == 300 and _logged_step(out) == 300


def test_a_run_with_its_output_closed_still_stops_cleanly_on_sigterm(corpus, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen("exec " + " ".join(_long_run(corpus, out)) + " >&- 2>&-", shell=True,
                            start_new_session=True)
    try:
        _wait_for_logged_step(out, 200, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM
    assert _saved_step(out) >= 200 and _saved_step(out) == _logged_step(out)


@pytest.mark.parametrize("stream", ["stderr", "stdout and stderr"])
def test_a_run_whose_reader_went_away_trains_to_its_budget_and_saves(corpus, tmp_path, stream):
    """`charlstm train ... 2>&1 | head -1`: the pipe breaks (EPIPE) after the first line."""
    out = tmp_path / "run"
    read, write = os.pipe()
    proc = subprocess.Popen([*CHARLSTM, "train", str(corpus), *TINY, "--steps", "400", "--out", str(out)],
                            stdout=write if stream != "stderr" else subprocess.DEVNULL, stderr=write)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        reader.read(10)  # the first few characters, then the reader goes away
    proc.wait(timeout=300)
    assert proc.returncode == 0
    assert _saved_step(out) == 400 and _logged_step(out) == 400


@pytest.mark.parametrize("signum", STOPS, ids=SIGNAL_IDS)
def test_a_stop_signal_ends_a_sample_with_what_was_generated_written(run, signum):
    proc = subprocess.Popen([*CHARLSTM, "sample", str(run), "--length", "100000000", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(200)  # generating
        proc.send_signal(signum)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err.decode()[-500:]
    assert b"Traceback" not in err and len(first) == 200
    assert (first + rest).endswith(b"\n")  # the sample so far, ended by a line break


@pytest.mark.parametrize("signum", STOPS, ids=SIGNAL_IDS)
def test_a_stop_signal_ends_eval_quietly_with_its_status(run, tmp_path, signum):
    text = tmp_path / "long.txt"
    text.write_text(make_text(6_000_000))
    proc = subprocess.Popen([*CHARLSTM, "eval", str(run), str(text)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline().startswith(b"reading ")  # reading done: evaluating
        time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err.decode()[-500:]
    assert b"Traceback" not in err and out == b""
