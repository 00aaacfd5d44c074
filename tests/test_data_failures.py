"""Outside the happy path, on the real CLI: a token cache that is damaged or keyed by a
path's spelling, runs started at the same moment, encoding advice that would garble
text, messages that state what is not so, files saved by editors, and checkpoints
damaged by a crash."""
import json
import subprocess

import numpy as np
import pytest

from conftest import CHARLSTM, assert_same_future, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


def notes(proc) -> list:
    return [line for line in proc.stderr.splitlines() if line.startswith("Note: ")]


def one_error_line(proc, code=1) -> str:
    """The single `Error: ...` line of a refused command (no traceback)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


# -- the token cache ------------------------------------------------------------------------

def _entry(run_dir):
    """The token cache entry of ``run_dir``: (.npy path, .json path)."""
    npy = sorted((run_dir / "tokens").glob("*.npy"))
    assert len(npy) == 1, npy
    return npy[0], npy[0].with_suffix(".json")


def test_the_first_resume_maps_the_cache_train_wrote(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", run)  # an absolute corpus path
    npy, meta = _entry(run)
    written = (npy.name, npy.stat().st_ino, meta.stat().st_ino)
    resumed = run_cli("resume", run, "--steps", "4")
    assert not notes(resumed), resumed.stderr
    npy, meta = _entry(run)
    assert (npy.name, npy.stat().st_ino, meta.stat().st_ino) == written  # read, not written again


def _zero_ids(npy, meta):
    length = json.loads(meta.read_text())["length"]
    data = bytearray(npy.read_bytes())
    data[len(data) - length:] = bytes(length)  # the ids only: the header still reads
    npy.write_bytes(bytes(data))


def _cut(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _replace_ids(npy, meta):
    ids = np.load(npy)
    np.save(npy, np.roll(ids, 1))  # a valid array of the right length: someone else's


DAMAGE = {
    "ids zeroed": _zero_ids,
    "ids cut short": lambda npy, meta: _cut(npy),
    "ids replaced": _replace_ids,
    "ids missing": lambda npy, meta: npy.unlink(),
    "description cut short": lambda npy, meta: _cut(meta),
    "description emptied": lambda npy, meta: meta.write_bytes(b""),
    "description zero-filled": lambda npy, meta: meta.write_bytes(bytes(meta.stat().st_size)),
}


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    """A corpus (given as a relative path, from its directory) and a run of 4 steps."""
    tmp = tmp_path_factory.mktemp("undamaged")
    (tmp / "c.txt").write_text(make_text(5000, seed=2))
    run_cli("train", "c.txt", *TINY, "--steps", "4", "--out", "whole", cwd=tmp)
    return tmp


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_token_cache_is_rebuilt_never_trained_on(undamaged, damage):
    run = undamaged / damage.replace(" ", "-")
    run_cli("train", "c.txt", *TINY, "--steps", "2", "--out", run, cwd=undamaged)
    DAMAGE[damage](*_entry(run))
    resumed = run_cli("resume", run, "--steps", "4", cwd=undamaged)
    said = notes(resumed)
    assert len(said) == 1 and "token cache" in said[0] and "damaged" in said[0], resumed.stderr
    assert_same_future(undamaged / "whole" / "last.npz", run / "last.npz")
    again = run_cli("resume", run, "--steps", "5", cwd=undamaged)  # the entry was rewritten
    assert not notes(again), again.stderr


# -- default run names ----------------------------------------------------------------------

def test_runs_started_at_the_same_moment_get_directories_of_their_own(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(3000))
    procs = [subprocess.Popen([*CHARLSTM, "train", "c.txt", *TINY, "--steps", "1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 6 and all((r / "last.npz").is_file() for r in runs), runs
