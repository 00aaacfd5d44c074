import fcntl
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tuner remembers its choices in the user's cache directory (tuning_cache.py): the
# suite keeps its own, so a developer's cache neither steers the tests nor gains entries
# from them. The CLI's subprocesses inherit it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="charlstm-tests-cache-")


_WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it")


@functools.lru_cache(maxsize=32)
def make_text(n_chars: int, seed: int = 0) -> str:
    """A small corpus with learnable structure: words from a tiny lexicon, in lines.
    Remembered per process: several tests ask for the same few million characters."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        # The draws of rng.choice(_WORDS, size=k), without its conversion of the lexicon
        # at every line (half the time of a long text).
        indices = rng.integers(0, len(_WORDS), size=rng.integers(3, 9))
        line = " ".join([_WORDS[i] for i in indices]) + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    return path


def _console_script() -> list[str]:
    """The `charlstm` command installed in this Python environment: the end-to-end tests
    run what a user runs (the README's test command installs it first)."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "charlstm",
                      Path(sys.executable).parent / "charlstm"):
        if candidate.is_file():
            return [str(candidate)]
    if shutil.which("charlstm"):
        return [shutil.which("charlstm")]
    raise RuntimeError("the charlstm command is not installed in this environment; "
                       "run the README's test command: pip install '.[test]' && python -m pytest -q")


CHARLSTM = _console_script()


def run_cli(*args, cwd=None, check=True, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the installed `charlstm` command in a subprocess."""
    proc = subprocess.run([*CHARLSTM, *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"charlstm {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def assert_same_future(ckpt_a, ckpt_b):
    """Everything in two checkpoints that determines how training goes on (parameters,
    optimizer state, random generator, carried state, step) is bit-identical."""
    a = np.load(ckpt_a, allow_pickle=False)
    b = np.load(ckpt_b, allow_pickle=False)
    for key in a.files:
        if key.startswith(("rnn.", "decoder.", "optim.", "state.")) or key in ("rng", "step"):
            assert np.array_equal(a[key], b[key]), key


def train_split_and_whole(tmp_path, corpus, args, n):
    """Through the CLI: train 2n steps in one go, and n steps then `resume` to 2n, with
    the same ``args``; returns the two run directories (whole, split)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli("train", corpus, *args, "--steps", str(2 * n), "--out", whole)
    run_cli("train", corpus, *args, "--steps", str(n), "--out", split)
    run_cli("resume", split, "--steps", str(2 * n), "--quiet")
    assert_same_future(whole / "last.npz", split / "last.npz")
    return whole, split


def tiny_config(corpus, **kw):
    """A tiny training configuration over ``corpus`` (lstm unless ``cell`` is given)."""
    from charlstm.training.config import TrainConfig

    base = dict(corpus=(str(corpus),), hidden_size=16, num_layers=2, seq_len=8, batch_size=4,
                save_every=1000, log_every=3, eval_every=0, val_frac=0.1)
    base.update(kw)
    return TrainConfig(**base)


def train(config, out_dir):
    """Train in-process to the end of ``config``'s budget, writing ``out_dir``."""
    from charlstm.training.loop import Trainer, prepare_data, run_training

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, prepare_data(config))
    assert run_training(trainer, out_dir, quiet=True) == 0
    return trainer


def resume(run_dir, **changes):
    """Resume ``run_dir``'s last.npz in-process with the configuration ``changes``, the
    way `charlstm resume` does (plan.plan_resume and run.resume_run: corpus check
    included)."""
    from charlstm.training.loop import run_training
    from charlstm.training.plan import plan_resume
    from charlstm.training.run import resume_run

    trainer = resume_run(plan_resume(run_dir, changes))
    assert run_training(trainer, run_dir, quiet=True) == 0
    return trainer


def assert_resume_is_bit_identical(tmp_path, config, n):
    """Train 2n steps in one go, and n steps then a resume to 2n; everything in the two
    final checkpoints that determines the future must be identical, and so must the
    training bpc of every step both logged. Returns (the whole run's Trainer, its
    checkpoint arrays)."""
    whole = train(config.replace(steps=2 * n), tmp_path / "whole")
    assert whole.steps_per_epoch < n, "the test should cross an epoch boundary"
    train(config.replace(steps=n), tmp_path / "split")
    resumed = resume(tmp_path / "split", steps=2 * n)
    a = np.load(tmp_path / "whole" / "last.npz", allow_pickle=False)
    b = np.load(tmp_path / "split" / "last.npz", allow_pickle=False)
    assert resumed.step == whole.step == 2 * n
    # The split run validated once more, at the end of its first half, so its
    # best_val_bpc and metrics may differ.
    history = ("config", "elapsed", "metrics", "best_val_bpc")
    assert set(a.files) == set(b.files)
    for key in a.files:
        if key not in history:
            assert np.array_equal(a[key], b[key]), key
    ma, mb = a["metrics"], b["metrics"]
    common = np.intersect1d(ma[:, 0], mb[:, 0])
    assert np.array_equal(ma[np.isin(ma[:, 0], common)][:, 2], mb[np.isin(mb[:, 0], common)][:, 2])
    return whole, a


# -- tests that time the machine --------------------------------------------------------
# The suite runs one worker per core (pytest-xdist). A test marked `alone` measures time
# against a --time budget and asserts on it, so it runs with every other worker idle: it
# takes an exclusive lock that every other test holds shared while it runs.
_SHARE_LOCK = Path(tempfile.gettempdir()) / (
    f"charlstm-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}.lock")


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: runs while no other test runs in any worker "
                                       "(it asserts on wall-clock time)")


@pytest.fixture(autouse=True)
def _machine_share(request):
    alone = request.node.get_closest_marker("alone") is not None
    with open(_SHARE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
