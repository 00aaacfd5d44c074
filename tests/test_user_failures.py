"""Failures users of char-rnn tools report, replayed on the real CLI, one kind each:
characters a checkpoint could not hold, input dropped without a word, a run directory
naming two models, text the terminal's locale cannot encode, messages promising files
that do not exist, continuing with new settings, primes too long for a command line, a
time budget that was not one, files left outside the run, and the kinds checked after
them (portable and locked run directories, permissions, encoding hints)."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np

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


def test_sample_with_standard_output_closed_says_so_in_one_line(run):
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *CHARLSTM, "sample", str(run),
                           "--length", "10"], capture_output=False, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "standard output is closed" in proc.stderr and "Traceback" not in proc.stderr


def test_the_progress_bar_shows_no_nan_before_the_first_validation(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    proc = run_cli("train", corpus, *TINY[:-1], "--steps", "4", "--log-every", "1",
                   "--out", tmp_path / "r")
    assert "val - bpc" in proc.stderr and "nan" not in proc.stderr


def _vocab(run_file):
    with np.load(run_file, allow_pickle=False) as z:
        return "".join(chr(c) for c in z["vocab"])


# 1. A character the checkpoint cannot hold ---------------------------------------------

@pytest.mark.parametrize("offset", [100, 10_000], ids=["near-the-start", "past-8KiB"])
def test_nul_bytes_anywhere_survive_every_checkpoint_round_trip(tmp_path, offset):
    text = make_text(20_000)
    corpus = tmp_path / "log.txt"
    corpus.write_text(text[:offset] + "\x00" * 4 + text[offset:], encoding="utf-8")
    out = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--steps", "3", "--out", out)
    assert "control characters '\\x00' x4" in proc.stderr  # reported, not hidden
    assert _vocab(out / "last.npz") == "".join(sorted(set(text + "\x00")))
    run_cli("info", out)
    run_cli("eval", out, corpus)
    run_cli("sample", out, "--length", "20", "--seed", "1")
    run_cli("resume", out, "--steps", "5", "--quiet")
    assert _vocab(out / "best.npz") == _vocab(out / "last.npz")


def test_a_save_refuses_a_file_that_does_not_read_back(tmp_path):
    from charlstm.model.checkpoint import _check_reads_back
    from charlstm.errors import CheckpointError

    path = tmp_path / "x.npz"
    np.savez(path, config=np.array("{}"), vocab=np.array([0, 97], dtype="<u4"))
    _check_reads_back(path, {"config": np.array("{}"), "vocab": np.array([0, 97], dtype="<u4")})
    with pytest.raises(CheckpointError, match="vocab does not read back"):
        _check_reads_back(path, {"config": np.array("{}"), "vocab": np.array([97], dtype="<u4")})


def test_format_1_checkpoints_with_a_string_vocabulary_still_load(run, tmp_path):
    from charlstm.model import checkpoint as ckpt_io

    with np.load(run / "last.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["config"].item())
    meta["format_version"] = 1
    del meta["history"], meta["origin"]
    arrays["config"] = np.array(json.dumps(meta))
    chars = [chr(c) for c in arrays["vocab"]]
    arrays["vocab"] = np.array(chars, dtype="<U1")
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    assert ckpt_io.load(old).vocab.chars == chars
    assert run_cli("sample", old, "--length", "5").returncode == 0


# 2. Input dropped without a word ------------------------------------------------------

def test_a_directory_reads_utf16_files_and_names_every_file_it_skips(tmp_path):
    part = make_text(3000)
    d = tmp_path / "d"
    (d / ".git").mkdir(parents=True)
    (d / ".git" / "HEAD").write_text("ref\n")
    (d / "part1.txt").write_text(part, encoding="utf-8")
    (d / "part2.txt").write_bytes(part.upper().encode("utf-16"))  # Windows "Unicode"
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (d / ".notes").write_text("hidden\n")
    proc = run_cli("train", d, *TINY, "--steps", "1", "--val-frac", "0", "--out", tmp_path / "r")
    assert _vocab(tmp_path / "r" / "last.npz") == "".join(sorted(set(part + part.upper())))
    notes = [line for line in proc.stderr.splitlines() if line.startswith("Note: skipped")]
    assert len(notes) == 3, proc.stderr
    assert any("logo.png: looks binary" in n for n in notes)
    assert any(".git" in n and "hidden directory" in n for n in notes)
    assert any(".notes: a hidden file" in n for n in notes)


def test_files_joined_from_a_directory_never_run_into_each_other(tmp_path):
    from charlstm.data.tokens import load_corpus

    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("the end")  # no final newline
    (d / "b.txt").write_text("")
    (d / "c.txt").write_text("next\n")
    (d / "e.txt").write_text("last")
    corpus = load_corpus([str(d)])
    assert corpus.vocab.decode(corpus.ids) == "the end\nnext\nlast"
    proc = run_cli("train", d, *TINY[:-1], "--batch-size", "1", "--seq-len", "4", "--steps", "1",
                   "--val-frac", "0", "--out", tmp_path / "r")
    joined = "the end\nnext\nlast"
    assert f"{len(joined)} training" in proc.stderr


# 3. A run directory that names two models ------------------------------------------

def test_new_validation_text_restarts_the_best_and_every_reader_names_its_checkpoint(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(make_text(5000, seed=1))
    new.write_text(make_text(5000, seed=2))
    out = tmp_path / "run"
    run_cli("train", old, *TINY, "--steps", "6", "--out", out)
    before = np.load(out / "best.npz", allow_pickle=False)["rnn.weight_ih_l0"]
    proc = run_cli("resume", out, "--corpus", new, "--steps", "9")
    assert "best-before-step-6.npz" in proc.stderr
    kept = np.load(out / "best-before-step-6.npz", allow_pickle=False)["rnn.weight_ih_l0"]
    assert np.array_equal(kept, before)
    with np.load(out / "best.npz", allow_pickle=False) as best, \
            np.load(out / "last.npz", allow_pickle=False) as last:
        assert best["step"] == 9 and best["best_val_bpc"] == last["best_val_bpc"]
    said = [run_cli(*cmd).stderr.strip().splitlines()[0]
            for cmd in (("sample", out, "--length", "5"), ("eval", out, new), ("info", out))]
    assert said[0] == said[1] == said[2] and said[0].startswith(f"reading {out / 'best.npz'} (step 9")


# 5. A message that promises what is not on disk --------------------------------------

def test_divergence_names_the_checkpoint_on_disk_and_the_run_resumes(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    out = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--optimizer", "sgd", "--lr", "1e30", "--clip", "0",
                   "--steps", "50", "--out", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{out / 'last.npz'} (step 0) is untouched" in proc.stderr
    assert np.load(out / "last.npz", allow_pickle=False)["step"] == 0
    run_cli("resume", out, "--lr", "0.01", "--quiet")
    assert np.load(out / "last.npz", allow_pickle=False)["step"] == 50


# 6. Continuing with new settings ------------------------------------------------------

def test_resume_changes_safe_settings_and_records_each_in_the_history(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    out = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "4", "--out", out)
    run_cli("resume", out, "--steps", "8", "--lr", "2e-4", "--clip", "1", "--dropout", "0.1",
            "--weight-decay", "0.01", "--lr-schedule", "cosine", "--warmup", "2", "--quiet")
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    cfg = info["config"]
    assert (cfg["lr"], cfg["clip"], cfg["dropout"], cfg["weight_decay"], cfg["lr_schedule"]) == \
        (2e-4, 1.0, 0.1, 0.01, "cosine")
    assert cfg["lr_horizon"] == 8  # the new schedule takes its horizon from the budget
    resumed = info["history"][-1]
    assert resumed["event"] == "resume" and resumed["step"] == 4
    assert resumed["changes"]["lr"] == [0.002, 2e-4] and resumed["changes"]["steps"] == [4, 8]
    assert "lr 0.002 -> 0.0002" in run_cli("info", out / "last.npz").stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 8 and 0 < metrics[-1]["lr"] < 1e-4  # annealing to 0 at step 8
    refused = run_cli("resume", out, "--hidden-size", "8", check=False)
    assert refused.returncode == 2 and "No such option" in refused.stderr


def test_train_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    base = tmp_path / "base.txt"
    base.write_text(make_text(5000, seed=1))
    out = tmp_path / "base"
    run_cli("train", base, *TINY, "--steps", "5", "--out", out)
    fine = tmp_path / "fine.txt"
    fine.write_text(make_text(3000, seed=4))
    tuned = tmp_path / "tuned"
    run_cli("train", fine, "--init-from", out / "last.npz", *TINY, "--steps", "0", "--lr", "1e-3",
            "--out", tuned)
    with np.load(out / "last.npz", allow_pickle=False) as a, \
            np.load(tuned / "last.npz", allow_pickle=False) as b:
        assert np.array_equal(a["rnn.weight_hh_l0"], b["rnn.weight_hh_l0"])  # same weights
        assert np.array_equal(a["vocab"], b["vocab"])
        assert b["step"] == 0 and not b["optim.exp_avg.decoder.bias"].any()  # fresh optimizer
    info = json.loads(run_cli("info", tuned / "last.npz", "--json").stdout)
    assert info["history"][0]["init_from_step"] == 5
    outside = tmp_path / "outside.txt"
    outside.write_text(make_text(3000) + "QZ")
    proc = run_cli("train", outside, "--init-from", out, *TINY, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 1 and "outside the model's vocabulary: 'Q', 'Z'" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = run_cli("train", fine, "--init-from", out, *TINY, "--cell", "gru", "--out",
                   tmp_path / "y", check=False)
    assert proc.returncode == 2 and "--cell gru differs" in proc.stderr


# 8. A budget that is not one ----------------------------------------------------------

@pytest.fixture(scope="module")
def long_validation(tmp_path_factory):
    """A corpus whose validation half (1.5 million characters, read whole) takes this
    tiny model most of a second or more to read."""
    path = tmp_path_factory.mktemp("long") / "big.txt"
    path.write_text(make_text(3_000_000), encoding="utf-8")
    return path


@pytest.mark.alone
def test_time_bounds_the_whole_invocation_validation_included(long_validation, tmp_path):
    out = tmp_path / "run"
    args = [long_validation, *TINY[:-1], "--val-frac", "0.5", "--val-chars", "0", "--time", "4s",
            "--out", out]
    run_cli("train", *args[:-4], "--steps", "1", "--out", tmp_path / "warm", "--quiet")  # kernels cached
    t0 = time.perf_counter()
    proc = run_cli("train", *args)
    wall = time.perf_counter() - t0
    # The child's budget began when it started. A machine that slowed after the final
    # validation's time was set aside may end the run late, by at most what was set
    # aside for it, and says so.
    late = _late(proc.stderr)
    assert wall < 4.0 + 0.5 + late[1], (wall, late)
    assert late[0] <= late[1]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val_bpc" in rows[-1], proc.stderr[-300:]  # the final validation scored the last step
    assert "left of 4.0s" in proc.stderr  # the progress bar shows the budget


def _late(stderr: str) -> tuple[float, float]:
    """(how late a --time run ended, how late its final validation was allowed to end it),
    from its note; (0, 0) for a run that ended in time."""
    found = re.search(r"ended ([\d.]+) s past the --time budget \(the final validation may "
                      r"take up to ([\d.]+) s", stderr)
    return (float(found[1]), float(found[2])) if found else (0.0, 0.0)


def _wait_for_the_final_validation(run_dir, proc):
    """Block until the run, logging every step and saving only at its end, stops logging
    for a while after its first line, its final save not yet written: it is reading its
    final validation (or, on a busy machine, in a slow step: a slowdown there must be
    met as well)."""
    metrics = run_dir / "metrics.jsonl"
    size, quiet_since = 0, time.monotonic()
    while proc.poll() is None:
        now = time.monotonic()
        current = metrics.stat().st_size if metrics.exists() else 0
        if current != size:
            size, quiet_since = current, now
        elif size > 0 and now - quiet_since > 0.15:
            with np.load(run_dir / "last.npz", allow_pickle=False) as z:
                if z["step"] == 0:
                    return
            raise AssertionError("the run saved its last step before the test could slow it")
        time.sleep(0.01)
    raise AssertionError(f"the run ended ({proc.returncode}) before its final validation")


@pytest.mark.alone
def test_a_machine_that_slows_during_the_final_validation_still_ends_scored(long_validation, tmp_path):
    """While the final validation of a --time run is read, the machine stops until past
    the deadline (SIGSTOP, then SIGCONT: a laptop lid, a swap storm, a host that
    deschedules the VM). The run ends with its last step scored, at most a stated time
    late, and names which checkpoint is which."""
    out = tmp_path / "run"
    # A final validation of some 3 s (hidden size 24 on 1.5 million characters): long
    # enough to be caught under way by a test process that a busy machine delays.
    budget = 12.0
    args = [long_validation, *TINY[:-1], "--hidden-size", "24", "--val-frac", "0.5", "--val-chars", "0",
            "--log-every", "1", "--save-every", "1000000", "--time", f"{budget:g}s", "--out", out]
    run_cli("train", *args[:-4], "--steps", "1", "--out", tmp_path / "warm", "--quiet")  # kernels cached
    t0 = time.monotonic()
    proc = subprocess.Popen([*CHARLSTM, "train", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_for_the_final_validation(out, proc)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(max(0.0, t0 + budget + 0.2 - time.monotonic()))  # stopped past the deadline
        proc.send_signal(signal.SIGCONT)
        err = proc.communicate(timeout=60)[1].decode()
        wall = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = int(np.load(out / "last.npz")["step"])
    assert rows[-1]["step"] == last and "val_bpc" in rows[-1], err[-600:]  # the last step, scored
    late, allowed = _late(err)
    assert 0 < late <= allowed, err[-700:]  # and the note said how late
    assert wall < budget + allowed + 1.0, (wall, late, allowed)
    assert f"{out / 'last.npz'}: step {last}, validation {rows[-1]['val_bpc']:.4f} bpc" in err
    assert "sample and eval read it" in err


def test_sigterm_during_validation_stops_promptly_with_the_checkpoint_saved(long_validation, tmp_path):
    out = tmp_path / "run"
    # Validating after every step, on 1.5 million characters at hidden size 64 (1-2 s a
    # validation here): nearly all the time goes to validation.
    proc = subprocess.Popen([*CHARLSTM, "train", str(long_validation), *TINY, "--hidden-size", "64",
                             "--val-frac", "0.5",
                             "--val-chars", "0", "--eval-every", "1", "--steps", "1000",
                             "--out", str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "best.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the first validation ended: the next one is under way
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        err = proc.communicate(timeout=60)[1].decode()
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert waited < 0.5 * _validation_seconds(out), waited  # well before the validation's end
    assert "cut the validation" in err and "Traceback" not in err
    assert np.load(out / "last.npz", allow_pickle=False)["step"] >= 2


def _validation_seconds(run_dir) -> float:
    """About how long one whole validation took in the run: the elapsed time of its
    first metrics line, written after the first step and the first validation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_bpc" in rows[0] and "val_bpc" not in rows[-1]  # the last one was cut
    return rows[0]["elapsed"]


@pytest.mark.parametrize("where", ["--time", "config", "sweep", "bench"])
def test_a_duration_without_a_unit_is_refused_asking_for_one(tmp_path, where):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    out = tmp_path / "run"
    if where == "--time":
        proc = run_cli("train", corpus, *TINY, "--time", "2", "--out", out, check=False)
        status = 2  # an invalid option
    elif where == "bench":
        proc = run_cli("bench", "--quality", "2", check=False)
        status = 2
    else:
        table = f'[train]\ncorpus = ["{corpus}"]\ntime = "2"\n'
        (tmp_path / "f.toml").write_text(table + (f'[sweep]\nout = "{out}"\n' if where == "sweep" else ""))
        proc = (run_cli("train", "--config", tmp_path / "f.toml", *TINY, "--out", out, check=False)
                if where == "config" else run_cli("sweep", tmp_path / "f.toml", "--dry-run", check=False))
        status = 1
    assert proc.returncode == status, proc.stderr
    assert "no unit: give 2s, 2m or 2h" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_bare_number_in_a_config_file_is_refused_and_the_documented_forms_read():
    from charlstm.training.config import parse_duration
    from charlstm.training.config_file import option
    from charlstm.errors import UserError

    with pytest.raises(UserError, match="with its unit in quotes"):
        option("time", 120, "f.toml [train]")
    with pytest.raises(ValueError, match="no unit"):
        parse_duration("1h30")
    assert [parse_duration(t) for t in ("90s", "10m", "1h30m", "1.5h", "2m30s")] == [90, 600, 5400, 5400, 150]


def test_resuming_a_finished_run_is_a_recognised_mistake_status_1(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", tmp_path / "run")
    proc = run_cli("resume", tmp_path / "run", check=False)
    assert proc.returncode == 1 and "already reached its budget (step 2)" in proc.stderr, proc.stderr


def test_a_missing_file_given_to_an_option_is_status_1_not_2(run, tmp_path):
    prime = run_cli("sample", run, "--prime-file", tmp_path / "nope.txt", check=False)
    assert prime.returncode == 1 and "nope.txt: No such file" in prime.stderr, prime.stderr
    bench = run_cli("bench", "--corpus", tmp_path / "nope.txt", "--steps", "1", check=False)
    assert bench.returncode == 1 and "nope.txt: no such file" in bench.stderr, bench.stderr


def test_quiet_hides_the_progress_bar_only(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    out = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--steps", "2", "--out", out)
    assert "step/s" not in proc.stderr and "it/s" not in proc.stderr  # no progress bar
    assert f"{out / 'last.npz'}: step 2, validation" in proc.stderr  # the result lines
    assert "parameters, vocabulary" in proc.stderr  # and the start-up lines


def test_validation_reads_at_most_val_chars_characters(tmp_path):
    from charlstm.training.loop import Trainer, prepare_data
    from conftest import tiny_config

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000))
    config = tiny_config(corpus, val_frac=0.5, val_chars=1000, steps=1)
    trainer = Trainer(config, prepare_data(config))
    assert len(trainer.validation_ids()) == 1001
    assert len(Trainer(config.replace(val_chars=0), prepare_data(config)).validation_ids()) == 10_000


# 9. Leftovers outside the run ---------------------------------------------------------

def test_a_run_writes_only_inside_its_directory(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    runs = tmp_path / "runs"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", runs / "exp1")
    run_cli("resume", runs / "exp1", "--steps", "3", "--quiet")
    assert [p.name for p in runs.iterdir()] == ["exp1"]
    assert (runs / "exp1" / "tokens").is_dir()  # the token cache lives in the run
    refused = run_cli("train", tmp_path / "missing.txt", *TINY, "--out", runs / "exp2", check=False)
    assert refused.returncode == 1 and [p.name for p in runs.iterdir()] == ["exp1"]


# Kinds checked later -------------------------------------------------------------------

def test_a_run_directory_is_portable(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "c.txt").write_text(make_text(5000))
    run_cli("train", "data/c.txt", *TINY, "--steps", "2", "--out", "runs/a", cwd=project)
    run_cli("resume", project / "runs" / "a", "--steps", "3", "--quiet", cwd=tmp_path)  # elsewhere
    moved = tmp_path / "moved"
    project.rename(moved)  # the folder holding the run and its corpus moves
    run_cli("resume", moved / "runs" / "a", "--steps", "4", "--quiet", cwd=tmp_path)
    (moved / "data" / "c.txt").rename(tmp_path / "c.txt")
    proc = run_cli("resume", moved / "runs" / "a", "--steps", "5", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is not found" in proc.stderr and "--corpus PATH" in proc.stderr
    run_cli("resume", moved / "runs" / "a", "--corpus", tmp_path / "c.txt", "--steps", "5", "--quiet")


def test_a_run_given_an_absolute_corpus_path_moves_with_it(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "c.txt").write_text(make_text(5000))
    run_cli("train", project / "data" / "c.txt", *TINY, "--steps", "2", "--out", project / "runs" / "a")
    moved = tmp_path / "moved"
    project.rename(moved)
    run_cli("resume", moved / "runs" / "a", "--steps", "3", "--quiet", cwd=tmp_path)
    assert np.load(moved / "runs" / "a" / "last.npz", allow_pickle=False)["step"] == 3


def test_two_processes_never_write_one_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    out = tmp_path / "run"
    first = subprocess.Popen([*CHARLSTM, "train", str(corpus), *TINY, "--time", "60s",
                              "--out", str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for args in (("resume", out, "--steps", "1000000"),
                     ("train", corpus, *TINY, "--force", "--out", out)):
            proc = run_cli(*args, check=False)
            assert proc.returncode == 1, proc.stderr
            assert f"in use by charlstm process {first.pid}" in proc.stderr
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    run_cli("resume", out, "--steps", "1000000", "--time", "1s", "--quiet")  # free again


@pytest.mark.parametrize("umask", [0o022, 0o007, 0o077])
def test_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    out = tmp_path / "run"
    proc = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *CHARLSTM,
                           "train", str(corpus), *TINY, "--steps", "2", "--out", str(out)],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = 0o666 & ~umask
    for path in (out / "last.npz", out / "best.npz", out / "metrics.jsonl"):
        assert (path.stat().st_mode & 0o777) == expected, path


def test_the_encoding_hint_names_an_encoding_that_reads_what_was_meant(tmp_path):
    meant = make_text(3000) + "\u201cquoted\u201d \u2013 caf\u00e9 \u20ac5\n"
    path = tmp_path / "windows.txt"
    path.write_bytes(meant.encode("cp1252"))
    proc = run_cli("train", path, *TINY, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    hint = proc.stderr.split("--encoding ")[-1].split(")")[0]
    assert path.read_bytes().decode(hint) == meant
    run_cli("train", path, *TINY, "--steps", "1", "--encoding", hint, "--out", tmp_path / "r")



# Cases found by trying the fixes above as a new user would --------------------------------

def test_a_codec_that_yields_surrogates_is_refused_before_training(tmp_path):
    corpus = tmp_path / "esc.txt"
    corpus.write_text("x \\ud800 y\n" * 200)
    out = tmp_path / "r"
    proc = run_cli("train", corpus, "--encoding", "unicode_escape", *TINY, "--out", out, check=False)
    assert proc.returncode == 1 and "unpaired surrogates" in proc.stderr
    assert not out.exists()
    for codec in ("base64", "zlib"):  # bytes-to-bytes codecs are not text encodings
        proc = run_cli("train", corpus, "--encoding", codec, *TINY, "--out", out, check=False)
        assert proc.returncode == 1 and "not a text encoding" in proc.stderr, proc.stderr


def test_a_validation_that_diverges_is_reported_as_divergence(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    out = tmp_path / "run"
    proc = run_cli("train", corpus, *TINY, "--optimizer", "sgd", "--lr", "1e30", "--clip", "0",
                   "--steps", "5", "--eval-every", "1", "--out", out, check=False)
    assert proc.returncode == 1 and "diverged" in proc.stderr and "--time" not in proc.stderr


def test_force_leaves_nothing_of_the_run_it_replaces(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(make_text(4000, seed=1))
    b.write_text(make_text(4000, seed=2))
    out = tmp_path / "run"
    run_cli("train", a, *TINY, "--steps", "4", "--out", out)
    run_cli("train", b, *TINY, "--steps", "2", "--val-frac", "0", "--out", out, "--force")
    assert not (out / "best.npz").exists()
    said = run_cli("info", out).stderr
    assert f"reading {out / 'last.npz'} (step 2" in said


def test_train_dot_never_reads_its_own_runs(tmp_path):
    (tmp_path / "notes.txt").write_text(make_text(5000))
    run_cli("train", ".", *TINY, "--steps", "2", "--out", "runs/one", cwd=tmp_path)
    proc = run_cli("train", ".", *TINY, "--steps", "2", "--out", "runs/two", cwd=tmp_path)
    assert "a charlstm run directory" in proc.stderr
    run_cli("resume", "runs/one", "--steps", "3", "--quiet", cwd=tmp_path)
    with np.load(tmp_path / "runs" / "one" / "last.npz", allow_pickle=False) as a, \
            np.load(tmp_path / "runs" / "two" / "last.npz", allow_pickle=False) as b:
        assert np.array_equal(a["vocab"], b["vocab"])  # the same text: notes.txt alone


def test_a_train_that_loses_the_race_for_a_directory_is_refused(tmp_path):
    slow, fast = tmp_path / "slow.txt", tmp_path / "fast.txt"
    slow.write_text("the cat sat on the mat.\n" * 1_500_000)  # 36 MB: seconds to read
    fast.write_text(make_text(4000))
    out = tmp_path / "run"
    first = subprocess.Popen([*CHARLSTM, "train", str(slow), *TINY, "--steps", "1", "--out", str(out)],
                             stderr=subprocess.PIPE)
    try:
        run_cli("train", fast, *TINY, "--steps", "1", "--val-frac", "0", "--out", out)
        err = first.communicate(timeout=120)[1].decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "already holds a run" in err, err
    assert _vocab(out / "last.npz") == "".join(sorted(set(make_text(4000))))


def test_a_best_scored_on_the_new_text_survives_a_crash_and_a_second_resume(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(make_text(5000, seed=1))
    new.write_text(make_text(5000, seed=2))
    out = tmp_path / "run"
    run_cli("train", old, *TINY, "--steps", "4", "--out", out)
    original_best = np.load(out / "best.npz", allow_pickle=False)["rnn.weight_hh_l0"]
    # The fine-tuning validates every step but never saves last.npz before it ends: a
    # crash (here SIGKILL at step 30 or later) leaves last.npz on the old text.
    proc = subprocess.Popen([*CHARLSTM, "resume", str(out), "--corpus", str(new), "--steps",
                             "100000", "--eval-every", "1", "--save-every", "1000000", "--quiet"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "best.npz").exists() and np.load(out / "best.npz")["step"] >= 30:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert np.load(out / "last.npz", allow_pickle=False)["step"] == 4
    new_best = np.load(out / "best.npz", allow_pickle=False)
    run_cli("resume", out, "--corpus", new, "--steps", "6", "--quiet")
    kept = np.load(out / "best-before-step-4.npz", allow_pickle=False)["rnn.weight_hh_l0"]
    assert np.array_equal(kept, original_best)  # the old text's best, not overwritten
    with np.load(out / "last.npz", allow_pickle=False) as last:
        assert last["best_val_bpc"] <= new_best["best_val_bpc"]  # the crash's best counts
    assert sorted(p.name for p in out.glob("best*.npz")) == ["best-before-step-4.npz", "best.npz"]


def test_a_best_that_cannot_be_written_still_saves_last(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    out = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", out)
    size_kb = (out / "last.npz").stat().st_size // 1024
    # A file-size limit a little above one checkpoint: a best.npz write fails while it
    # grows with its metrics... simpler to fill: make best.npz's directory entry a
    # directory, so that renaming onto it fails.
    (out / "best.npz").unlink()
    (out / "best.npz").mkdir()
    proc = run_cli("resume", out, "--steps", "6", "--eval-every", "2", "--save-every", "100", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "could not write" in proc.stderr and "saved step 4 in last.npz" in proc.stderr, proc.stderr
    assert np.load(out / "last.npz", allow_pickle=False)["step"] == 4
    assert size_kb > 0


def test_what_a_walk_or_a_command_line_cannot_read_is_named(tmp_path):
    d = tmp_path / "d"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "more.txt").write_text("more text\n")
    d.mkdir()
    (d / "a.txt").write_text(make_text(3000))
    (d / "linked").symlink_to(tmp_path / "elsewhere")
    (d / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    proc = run_cli("train", d, *TINY, "--steps", "1", "--out", tmp_path / "r")
    assert "linked" in proc.stderr and "not followed" in proc.stderr
    assert "dangling.txt: a broken symbolic link" in proc.stderr
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = run_cli("train", d / "a.txt", fifo, *TINY, "--out", tmp_path / "r2", check=False)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr
    proc = run_cli("train", d / "dangling.txt", *TINY, "--out", tmp_path / "r3", check=False)
    assert proc.returncode == 1 and "symbolic link" in proc.stderr
    only_hidden = tmp_path / "h"
    only_hidden.mkdir()
    (only_hidden / ".x.txt").write_text("x\n")
    proc = run_cli("train", only_hidden, *TINY, "--out", tmp_path / "r4", check=False)
    assert proc.returncode == 1 and ".x.txt: a hidden file" in proc.stderr
    twice = run_cli("train", d / "a.txt", tmp_path / "d" / ".." / "d" / "a.txt", *TINY[:-1], "--steps", "1",
                    "--val-frac", "0", "--out", tmp_path / "r5")
    assert "3,000 training" in twice.stderr  # one file, read once


@pytest.mark.parametrize("codec, text", [
    ("cp1252", "\u201cQuoted\u201d \u2013 caf\u00e9 \u20ac5 na\u00efve r\u00e9sum\u00e9. The end.\n"),
    ("cp1251", "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, \u044d\u0442\u043e "
               "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442.\n"),
    ("euc-kr", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4 \ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.\n"),
    ("gb18030", "\u4f60\u597d\u4e16\u754c\uff0c\u8fd9\u662f\u4e2d\u6587\u6587\u672c\u3002\u6211\u4eec\u7684\u56fd\u5bb6\u3002\n"),
    ("shift_jis", "\u3053\u308c\u306f\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002\u30c6\u30ad\u30b9\u30c8\u3002\n"),
])
def test_the_encoding_hint_reads_the_text_as_written(codec, text):
    from charlstm.data.corpus import suggest_encoding

    data = (text * 30).encode(codec)
    assert data.decode(suggest_encoding(data, "utf-8")) == text * 30


def test_utf8_with_a_damaged_byte_is_called_that(tmp_path):
    text = ("caf\u00e9 na\u00efve " * 200).encode("utf-8")
    damaged = tmp_path / "damaged.txt"
    damaged.write_bytes(text[:301] + b"\xff" + text[301:])
    proc = run_cli("train", damaged, *TINY, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 1 and "UTF-8 apart from 1 damaged byte" in proc.stderr
    whole = tmp_path / "whole.txt"
    whole.write_bytes(text)
    ascii_asked = run_cli("train", whole, "--encoding", "ascii", *TINY, "--out", tmp_path / "r", check=False)
    assert "--encoding utf-8" in ascii_asked.stderr
    be = tmp_path / "be.txt"
    be.write_bytes(make_text(2000).encode("utf-16-be"))
    proc = run_cli("train", be, *TINY, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 1 and "--encoding utf-16-be" in proc.stderr


def test_format_1_checkpoints_of_runs_with_nul_load(run, tmp_path):
    from charlstm.model import checkpoint as ckpt_io

    with np.load(run / "last.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["config"].item())
    meta["format_version"] = 1
    arrays["config"] = np.array(json.dumps(meta))
    chars = ["\x00"] + [chr(c) for c in arrays["vocab"]][1:]  # as if the text held a NUL
    arrays["vocab"] = np.array(chars, dtype="<U1")  # which <U1 stores as ''
    assert arrays["vocab"][0] == ""
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    assert ckpt_io.load(old).vocab.chars == chars


def test_info_on_a_run_gives_the_runs_whole_history(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    out = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "3", "--out", out)
    run_cli("resume", out, "--steps", "4", "--lr", "0.5", "--eval-every", "1000", "--quiet")
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["last_step"] == 4 and info["history"][-1]["changes"]["lr"] == [0.002, 0.5]


def test_a_utf16_prime_file_is_read(run, tmp_path):
    prime = tmp_path / "p.txt"
    prime.write_bytes("ok 👍 the".encode("utf-16"))
    proc = run_cli("sample", run, "--prime-file", prime, "--length", "5", "--seed", "1")
    assert proc.stdout.startswith("ok 👍 the")


def test_bench_says_what_its_worker_refused_in_one_line(tmp_path):
    """`bench` measures in worker processes; input a worker refuses (a BLAS that is not
    one) is the parent's one-line error, as `train` gives it, not the worker's traceback
    wrapped in the parent's. --quality with two configurations is refused too: it
    compares one."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000))
    proc = run_cli("bench", "--steps", "1", "--warmup", "0", "--config", "S", "--blas", "nosuch",
                   "--corpus", corpus, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: BLAS choice 'nosuch'")
    proc = run_cli("bench", "--quality", "5s", "--config", "S", "--config", "R", "--corpus", corpus,
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "compares one configuration" in proc.stderr
