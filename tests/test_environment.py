"""An odd environment: a read-only install and home, and the variables Numba, OpenBLAS and
charlstm read at start-up. Each works, or charlstm says in one line which variable to
change, and commands that need no kernel never compile or even import one."""
import os
import shutil
import subprocess

import pytest

from conftest import CHARLSTM, ROOT, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]
SAMPLE = ["--length", "60", "--seed", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("environment")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    run_cli("train", corpus, *TINY, "--steps", "3", "--out", tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def reference_sample(run):
    return run_cli("sample", run, *SAMPLE).stdout


def _lines(stderr: str, word: str) -> list[str]:
    return [line for line in stderr.splitlines() if word in line]


def _without(package_names, tmp_path):
    """PYTHONPATH under which importing each of ``package_names`` fails."""
    broken = tmp_path / "broken"
    for name in package_names:
        (broken / name).mkdir(parents=True)
        (broken / name / "__init__.py").write_text(
            f"raise ImportError('{name} is unusable here (a test of charlstm)')\n")
    return os.pathsep.join(filter(None, [str(broken), os.environ.get("PYTHONPATH")]))


def test_info_and_export_need_no_numba(run, tmp_path):
    env = {"PYTHONPATH": _without(["numba", "llvmlite"], tmp_path)}
    info = run_cli("info", run, "--json", env=env)
    assert '"step": 3' in info.stdout
    run_cli("info", run, "--toml", env=env)
    for fmt, needs in (("safetensors", "safetensors"), ("onnx", "onnx"),
                       ("tensorboard", "tensorboardX")):
        pytest.importorskip(needs)
        out = tmp_path / f"exported-{fmt}"
        run_cli("export", run, "--format", fmt, "-o", out, env=env)
        assert out.exists()


# -- a read-only install and home ---------------------------------------------------------

_READ_ONLY = ('d="$1"; shift; mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" "$d" '
              '|| exit 97; exec "$@"')


def _read_only_runner(directory):
    """A command prefix that runs a command with ``directory`` read-only for it, even to
    root, who ignores file permissions: a bind mount remounted read-only in a mount
    namespace of its own (nothing changes outside it). Not root: the permissions, which
    then bind. None where neither can be had."""
    if os.geteuid() != 0:
        for path in [directory, *directory.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o222)
        return []
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READ_ONLY, "sh",
              str(directory)]
    probe = subprocess.run([*prefix, "touch", str(directory / "probe")], capture_output=True)
    if probe.returncode == 97 or (directory / "probe").exists():
        return None
    return prefix


@pytest.fixture
def read_only_install(tmp_path):
    """(runner, environment): this checkout's charlstm copied under a directory that is
    read-only to the commands the runner starts, and a HOME inside it."""
    frozen = tmp_path / "read-only"
    shutil.copytree(ROOT / "charlstm", frozen / "site" / "charlstm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (frozen / "home").mkdir()
    env = {**os.environ, "PYTHONPATH": str(frozen / "site"), "HOME": str(frozen / "home")}
    for name in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    runner = _read_only_runner(frozen)
    if runner is None:
        pytest.skip("neither a read-only bind mount (root without mount rights here) nor "
                    "file permissions (root ignores them) can make a directory read-only")
    return runner, env, frozen


def _charlstm(runner, env, *args):
    return subprocess.run([*runner, *CHARLSTM, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_a_read_only_install_and_home_compile_in_memory_and_say_so_once(
        run, reference_sample, read_only_install, tmp_path):
    runner, env, frozen = read_only_install
    info = _charlstm(runner, env, "info", run)
    assert info.returncode == 0 and not _lines(info.stderr, "Note:"), info.stderr
    sample = _charlstm(runner, env, "sample", run, *SAMPLE)
    assert sample.returncode == 0 and "Traceback" not in sample.stderr, sample.stderr[-3000:]
    assert sample.stdout == reference_sample
    notes = _lines(sample.stderr, "Note:")
    assert len(notes) == 1, sample.stderr  # once, not once per kernel
    assert "NUMBA_CACHE_DIR" in notes[0]
    assert str(frozen / "site" / "charlstm" / "kernels" / "__pycache__") in notes[0]

    # NUMBA_CACHE_DIR keeps the kernels; the next start loads them instead of compiling.
    cache = tmp_path / "kernels-cache"
    env = {**env, "NUMBA_CACHE_DIR": str(cache)}
    kept = _charlstm(runner, env, "sample", run, *SAMPLE)
    assert kept.returncode == 0 and kept.stdout == reference_sample, kept.stderr
    assert not _lines(kept.stderr, "Note:")
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(p.suffix == ".nbc" for p in written)
    again = _charlstm(runner, env, "sample", run, *SAMPLE)
    assert again.returncode == 0 and again.stdout == reference_sample
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == written
