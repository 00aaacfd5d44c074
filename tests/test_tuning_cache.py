"""The tuner's remembered choices (tuning_cache.py), through the installed command: two
fresh runs on one machine choose alike and so train the same model bit for bit;
--retune measures again; a cache that cannot be read or written costs only the
measurement."""
from __future__ import annotations

import json

import numpy as np

from conftest import make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "2", "--seq-len", "8", "--batch-size", "6",
        "--steps", "4", "--seed", "3"]


def _train(tmp_path, corpus, name, cache, *extra):
    proc = run_cli("train", corpus, *TINY, "--out", tmp_path / name, *extra,
                   env={"XDG_CACHE_HOME": str(cache)})
    return proc.stderr


def _params(run_dir):
    with np.load(run_dir / "last.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("rnn.", "decoder."))}


def test_a_second_run_takes_the_remembered_choice_and_trains_the_same_model(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    cache = tmp_path / "cache"
    first = _train(tmp_path, corpus, "a", cache)
    assert "measured now" in first
    entries = json.loads((cache / "charlstm" / "tuning.json").read_text())["entries"]
    assert len(entries) == 1
    second = _train(tmp_path, corpus, "b", cache)
    assert "chosen by an earlier measurement here" in second
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    retuned = _train(tmp_path, corpus, "c", cache, "--retune")
    assert "measured now" in retuned
    # Another shape is another entry.
    _train(tmp_path, corpus, "d", cache, "--hidden-size", "24")
    entries = json.loads((cache / "charlstm" / "tuning.json").read_text())["entries"]
    assert len(entries) == 2


def test_an_unusable_cache_costs_only_the_measurement(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    for name in ("a", "b"):  # nothing can be kept: both measure
        assert "measured now" in _train(tmp_path, corpus, name, not_a_directory)
    damaged = tmp_path / "damaged"
    (damaged / "charlstm").mkdir(parents=True)
    (damaged / "charlstm" / "tuning.json").write_bytes(b"\x00\x00{not json")
    assert "measured now" in _train(tmp_path, corpus, "c", damaged)
    assert "chosen by an earlier measurement here" in _train(tmp_path, corpus, "d", damaged)


def test_retune_goes_with_blas_auto(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    proc = run_cli("train", corpus, *TINY, "--blas", "openblas", "--retune",
                   "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "--retune" in proc.stderr
