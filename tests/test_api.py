"""The Python API (charlstm.train, load, Model.sample, Model.bpc, resume) gives what the
command line gives for the same options and seed, and raises the errors the command
line prints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import charlstm
from conftest import make_text, run_cli

TINY = dict(hidden_size=16, num_layers=2, seq_len=16, batch_size=4, threads=1,
            blas="openblas", step_weights="stored/stored")
TINY_CLI = ["--hidden-size", "16", "--num-layers", "2", "--seq-len", "16", "--batch-size", "4",
            "--threads", "1", "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


def _params(run_dir):
    with np.load(run_dir / "last.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("rnn.", "decoder.", "optim."))}


def test_train_load_sample_bpc_and_resume_equal_the_command_lines(tmp_path):
    corpus, held_out = tmp_path / "text.txt", tmp_path / "held-out.txt"
    corpus.write_text(make_text(12_000), encoding="utf-8")
    held_out.write_text(make_text(2_000, seed=7), encoding="utf-8")
    lines = []
    run = charlstm.train(corpus, out=tmp_path / "api", steps=12, seed=3, echo=lines.append,
                         **TINY)
    run_cli("train", corpus, *TINY_CLI, "--steps", "12", "--seed", "3", "--out", tmp_path / "cli")
    assert run.status == 0 and run.step == 12 and run.directory == tmp_path / "api"
    assert any(line.startswith("charlstm ") for line in lines)
    api, cli = _params(tmp_path / "api"), _params(tmp_path / "cli")
    assert all(np.array_equal(api[k], cli[k]) for k in cli)

    model = charlstm.load(tmp_path / "api")
    text = model.sample(120, prime="the ", temperature=0.7, seed=5)
    printed = run_cli("sample", tmp_path / "cli", "--length", "120", "--prime", "the ",
                      "--temperature", "0.7", "--seed", "5").stdout
    assert text == printed[:-1] and text.startswith("the ")
    assert "".join(model.stream(120, prime="the ", temperature=0.7, seed=5)) == text

    bpc = model.bpc(held_out.read_text(encoding="utf-8"))
    scored = json.loads(run_cli("eval", tmp_path / "cli", held_out, "--json").stdout)
    assert bpc == scored["bpc"]

    more = charlstm.resume(tmp_path / "api", steps=20, echo=lines.append)
    run_cli("resume", tmp_path / "cli", "--steps", "20", "--quiet")
    assert more.step == 20
    api, cli = _params(tmp_path / "api"), _params(tmp_path / "cli")
    assert all(np.array_equal(api[k], cli[k]) for k in cli)


def test_api_errors_are_the_packages_one_line_errors(tmp_path):
    with pytest.raises(charlstm.UserError, match="no such checkpoint|no last.npz"):
        charlstm.load(tmp_path / "nothing.npz")
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(12_000), encoding="utf-8")
    with pytest.raises(charlstm.UserError, match="no unit"):
        charlstm.train(corpus, time="2", out=tmp_path / "x", **TINY)
    with pytest.raises(charlstm.UserError, match="hidden_size"):
        charlstm.train(corpus, out=tmp_path / "y", steps=1, **dict(TINY, hidden_size=0))
    with pytest.raises(charlstm.UsageProblem, match="no such setting"):
        charlstm.train(corpus, out=tmp_path / "z", steps=1, hidden=8)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    run = charlstm.train(corpus, out=tmp_path / "run", steps=2, echo=lambda line: None, **TINY)
    model = run.model()
    with pytest.raises(charlstm.UserError, match="outside the model's vocabulary"):
        model.sample(10, prime="QX")
    with pytest.raises(charlstm.UserError, match="outside the model's vocabulary"):
        model.bpc("QQQ")
    assert model.score("QQQ the", skip_unknown=True)[1] == 4


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's "From Python" block, run as written (in a scratch directory)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["run"].step == 60 and len(namespace["text"]) == len("The ") + 200
    assert 0 < namespace["bpc"] < 10
    assert json.loads(run_cli("info", tmp_path / "runs/api-example", "--json").stdout)["last_step"] == 90
