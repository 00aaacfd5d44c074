"""Run configuration files: `info RUN --toml` writes a run's [train] table, `train --config`
reads one, options on the command line win, and a bad file is refused in one line."""
import json

import pytest

from charlstm.training.config import TrainConfig
from charlstm.training.config_file import read, write
from charlstm.errors import UserError
from conftest import assert_same_future, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "8", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


def test_write_then_read_gives_the_configuration_back(tmp_path):
    config = TrainConfig(corpus=("a.txt", "dir/b ü.txt"), cell="gru", hidden_size=7, lr=3e-3,
                         lr_schedule="cosine", lr_horizon=100, dropout=0.25, steps=40,
                         time_limit=90.5, threads=2, blas="mkl/openblas",
                         step_weights="transposed/stored", encoding="latin-1")
    path = tmp_path / "run.toml"
    path.write_text(write(config, "a comment\non two lines"), encoding="utf-8")
    assert TrainConfig(**read(path)) == config


def test_a_run_is_repeated_from_its_own_file(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    first, again = tmp_path / "first", tmp_path / "again"
    run_cli("train", corpus, *TINY, "--dropout", "0.1", "--seed", "4", "--steps", "6",
            "--out", first)
    run_file = tmp_path / "run.toml"
    run_file.write_text(run_cli("info", first, "--toml").stdout)
    run_cli("train", "--config", run_file, "--out", again, "--quiet")
    assert_same_future(first / "last.npz", again / "last.npz")
    assert json.loads(run_cli("info", again, "--json").stdout)["config"]["corpus"] == [str(corpus)]


def test_the_command_line_wins_over_the_file(tmp_path):
    corpus, other = tmp_path / "c.txt", tmp_path / "other.txt"
    corpus.write_text(make_text(3000))
    other.write_text(make_text(3000, seed=5))
    run_file = tmp_path / "run.toml"
    run_file.write_text(f'[train]\ncorpus = ["{corpus}"]\nhidden_size = 12\nlr = 0.01\n'
                        f'seq_len = 8\nbatch_size = 4\nsteps = 2\ntime = "10m"\n')
    run_cli("train", "--config", run_file, "--hidden-size", "8", "--out", tmp_path / "a", "--quiet")
    config = json.loads(run_cli("info", tmp_path / "a", "--json").stdout)["config"]
    assert (config["hidden_size"], config["lr"], config["time_limit"]) == (8, 0.01, 600.0)
    assert config["corpus"] == [str(corpus)]
    run_cli("train", other, "--config", run_file, "--out", tmp_path / "b", "--quiet")
    assert json.loads(run_cli("info", tmp_path / "b", "--json").stdout)["config"]["corpus"] == [str(other)]


@pytest.mark.parametrize("text,message", [
    ("[train]\nhiden_size = 3\n", r"unknown key 'hiden_size'; the keys are train's options"),
    ("[train]\nhidden_size = \"big\"\n", r"key 'hidden_size' must be an integer, not 'big'"),
    ("[train]\nlr = true\n", r"key 'lr' must be a number, not True"),
    ("[train]\ncorpus = \"one.txt\"\n", r"key 'corpus' must be a list of paths"),
    ("[train]\ntime = \"soon\"\n", r"key 'time': cannot read 'soon' as a duration"),
    ("[train\n", r"is not valid TOML"),
    ("", r"has no \[train\] table"),
    ("hidden_size = 3\n", r"key 'hidden_size' is outside every table .*move it under \[train\]"),
    ("[train]\n[sweep]\n", r"unknown table \[sweep\]; a run configuration file has one table, \[train\]"),
])
def test_a_bad_file_is_refused_in_one_line_naming_the_key(tmp_path, text, message):
    import re

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read(path)
    proc = run_cli("train", "--config", path, "--out", tmp_path / "r", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert re.search(message, lines[0]) and lines[0].startswith("Error: ")
    assert not (tmp_path / "r").exists()


def test_a_missing_file_is_refused(tmp_path):
    proc = run_cli("train", "--config", tmp_path / "none.toml", check=False)
    assert proc.returncode == 1 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
