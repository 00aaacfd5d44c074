"""End-to-end: the real CLI in a subprocess, as a user runs it."""
import json
import sys
import signal
import subprocess
import time

import numpy as np

from conftest import CHARLSTM, ROOT, make_text, run_cli, train_split_and_whole

TINY = ["--hidden-size", "16", "--num-layers", "2", "--seq-len", "16", "--batch-size", "4", "--quiet"]


def test_train_sample_resume_eval_info(tmp_path, small_corpus):
    run = tmp_path / "run"
    run_cli("train", small_corpus, *TINY, "--steps", "20", "--out", run, "--eval-every", "10")
    assert (run / "last.npz").is_file() and (run / "best.npz").is_file()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 20 and "val_bpc" in rows[-1]

    first = run_cli("sample", run, "--length", "60", "--seed", "7", "--prime", "the ").stdout
    again = run_cli("sample", run, "--length", "60", "--seed", "7", "--prime", "the ").stdout
    assert first == again
    assert first.startswith("the ") and len(first) == len("the ") + 60 + 1
    greedy = run_cli("sample", run / "last.npz", "--length", "30", "--temperature", "0").stdout
    assert len(greedy) == 31
    topk = run_cli("sample", run, "--length", "40", "--top-k", "1", "--seed", "1").stdout
    assert topk == run_cli("sample", run, "--length", "40", "--top-k", "1", "--seed", "2").stdout

    run_cli("resume", run, "--steps", "30", "--quiet")
    info = json.loads(run_cli("info", run, "--json").stdout)
    assert info["step"] == 30 and info["config"]["hidden_size"] == 16
    assert info["vocab_size"] == len(set(small_corpus.read_text()))
    assert info["best_val_bpc"] is not None
    text_info = run_cli("info", run / "last.npz").stdout
    assert "parameters" in text_info and "step           30" in text_info

    ev = json.loads(run_cli("eval", run / "last.npz", small_corpus, "--json").stdout)
    assert ev["chars"] == len(small_corpus.read_text()) and 0 < ev["bpc"] < 8
    plain = run_cli("eval", run / "last.npz", small_corpus).stdout.strip()
    assert plain == f"{ev['bpc']:.4f}"


def test_resume_refuses_a_changed_corpus_unless_told(tmp_path, small_corpus):
    run = tmp_path / "run"
    run_cli("train", small_corpus, *TINY, "--steps", "3", "--out", run)
    small_corpus.write_text(make_text(6000, seed=5))
    proc = run_cli("resume", run, "--steps", "5", check=False)
    assert proc.returncode == 1 and "corpus changed" in proc.stderr and "Traceback" not in proc.stderr
    other = tmp_path / "other.txt"
    other.write_text("the cat sat.\n" * 300)
    run_cli("resume", run, "--steps", "5", "--quiet", "--corpus", other)
    alien = tmp_path / "alien.txt"
    alien.write_text("ZZZ qqq " * 500)
    proc = run_cli("resume", run, "--steps", "7", "--corpus", alien, check=False)
    assert proc.returncode == 1 and "'Z'" in proc.stderr and "'q'" in proc.stderr


def test_refuses_to_overwrite_a_run(tmp_path, small_corpus):
    run = tmp_path / "run"
    run_cli("train", small_corpus, *TINY, "--steps", "2", "--out", run)
    proc = run_cli("train", small_corpus, *TINY, "--steps", "2", "--out", run, check=False)
    assert proc.returncode == 1 and "charlstm resume" in proc.stderr and "--force" in proc.stderr
    run_cli("train", small_corpus, *TINY, "--steps", "2", "--out", run, "--force")


def test_sigint_saves_and_exits_130(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text(make_text(200_000))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*CHARLSTM, "train", corpus, *TINY, "--steps", "1000000",
         "--out", run, "--log-every", "1", "--save-every", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    with np.load(run / "last.npz", allow_pickle=False) as z:
        assert int(z["step"]) >= 1


def test_console_script_python_m_and_the_checkout_script_are_one_cli():
    """The installed command, `python -m charlstm` and a checkout's cli.py run the same
    command line (the package's), and the install adds no top-level `cli` module."""
    import importlib.util

    outs = [subprocess.run(cmd + ["--version"], capture_output=True, text=True, check=True,
                           cwd=cwd).stdout
            for cmd, cwd in ((CHARLSTM, None), ([sys.executable, "-m", "charlstm"], None),
                             ([sys.executable, str(ROOT / "cli.py")], None))]
    assert outs[0] == outs[1] == outs[2] and outs[0].startswith("charlstm, version")
    # From outside the checkout, nothing named `cli` is importable from the install.
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "print(importlib.util.find_spec('cli') is None)"],
                           capture_output=True, text=True, check=True, cwd="/")
    assert probe.stdout.strip() == "True"
    assert importlib.util.find_spec("charlstm.cli") is not None


def test_dropout_and_weight_decay_through_the_cli(tmp_path, small_corpus):
    """Trained with --dropout and --weight-decay in one go, or stopped and resumed: the same
    parameters, bit for bit; evaluation and sampling run without dropout (deterministic)."""
    # Two fresh runs: the products are pinned, since --blas auto may choose differently
    # in each when candidates measure within noise of each other (README, train).
    reg = ["--dropout", "0.25", "--weight-decay", "0.05", "--seed", "3",
           "--blas", "openblas", "--step-weights", "transposed/stored"]
    whole, _ = train_split_and_whole(tmp_path, small_corpus, [*TINY, *reg], 4)
    config = json.loads(run_cli("info", whole, "--json").stdout)["config"]
    assert config["dropout"] == 0.25 and config["weight_decay"] == 0.05
    ev = [run_cli("eval", whole / "last.npz", small_corpus).stdout for _ in range(2)]
    assert ev[0] == ev[1]
    s = [run_cli("sample", whole, "--length", "30", "--seed", "1").stdout for _ in range(2)]
    assert s[0] == s[1] and len(s[0]) == 31
