"""Failures users of char-rnn tools report, replayed on the real CLI: text that the
terminal's locale cannot encode, primes too long for a command line, Ctrl-C while
sampling, and a progress bar that showed 'nan' before the first validation."""
import os
import signal
import subprocess

import pytest

from conftest import CHARLSTM, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]
EMOJI_TEXT = make_text(4000) + "ok 👍 ça va? ✓\n" * 20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users")
    corpus = tmp / "corpus.txt"
    corpus.write_text(EMOJI_TEXT, encoding="utf-8")
    out = tmp / "run"
    run_cli("train", corpus, *TINY, "--steps", "3", "--out", out)
    return out


# The C locale without Python's coercion of it to UTF-8 gives an ASCII stdout.
@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "cp1252"},
                                 {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "",
                                  "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}],
                         ids=["cp1252", "C-locale"])
def test_output_is_utf8_whatever_the_locale(run, env):
    proc = subprocess.run([*CHARLSTM, "sample", str(run), "--prime", "ok 👍", "--length", "40",
                           "--seed", "1"], capture_output=True, env={**os.environ, **env},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode("utf-8")  # raises if it is not UTF-8
    assert text.startswith("ok 👍") and len(text) == len("ok 👍") + 40 + 1
    assert b"Traceback" not in proc.stderr
    info = subprocess.run([*CHARLSTM, "info", str(run)], capture_output=True,
                          env={**os.environ, **env}, timeout=300)
    assert info.returncode == 0 and b"Traceback" not in info.stderr


def test_a_long_multiline_prime_from_a_file_or_stdin_is_used_verbatim(run, tmp_path):
    prime = make_text(200_000, seed=3) + "ok 👍\n\n"  # 200 KB, ends in two newlines
    path = tmp_path / "prime.txt"
    path.write_text(prime, encoding="utf-8")
    from_file = run_cli("sample", run, "--prime-file", path, "--length", "20", "--seed", "2")
    assert from_file.stdout.startswith(prime) and len(from_file.stdout) == len(prime) + 21
    from_stdin = subprocess.run([*CHARLSTM, "sample", str(run), "--prime-file", "-", "--length",
                                 "20", "--seed", "2"], input=prime.encode("utf-8"),
                                capture_output=True, timeout=300)
    assert from_stdin.returncode == 0 and from_stdin.stdout.decode("utf-8") == from_file.stdout
    both = run_cli("sample", run, "--prime", "ok", "--prime-file", path, check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    bad = tmp_path / "latin.txt"
    bad.write_bytes("ça".encode("latin-1"))
    proc = run_cli("sample", run, "--prime-file", bad, check=False)
    assert proc.returncode == 1 and "not valid UTF-8 at byte 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_during_sample_stops_quietly_with_130(run):
    proc = subprocess.Popen([*CHARLSTM, "sample", str(run), "--length", "100000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(64)  # it is generating
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert b"Aborted" not in err and b"Traceback" not in err


def test_the_progress_bar_shows_no_nan_before_the_first_validation(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    proc = run_cli("train", corpus, *TINY[:-1], "--steps", "4", "--log-every", "1",
                   "--out", tmp_path / "r")
    assert "val - bpc" in proc.stderr and "nan" not in proc.stderr
