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


@pytest.fixture(scope="module")
def reference_eval(run):
    """`eval`'s output: of the commands that run kernels, it compiles the fewest."""
    return run_cli("eval", run, run.parent / "corpus.txt").stdout


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
    # access(2) answers "not writable" on a read-only mount, even to root.
    probe = subprocess.run([*prefix, "sh", "-c", 'test ! -w "$0"', str(directory)],
                           capture_output=True)
    return prefix if probe.returncode == 0 else None


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
        run, reference_eval, read_only_install, tmp_path):
    runner, env, frozen = read_only_install
    corpus = run.parent / "corpus.txt"
    info = _charlstm(runner, env, "info", run)
    assert info.returncode == 0 and not _lines(info.stderr, "Note:"), info.stderr
    evaluated = _charlstm(runner, env, "eval", run, corpus)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Traceback" not in evaluated.stderr and evaluated.stdout == reference_eval
    notes = _lines(evaluated.stderr, "Note:")
    assert len(notes) == 1, evaluated.stderr  # once, not once per kernel
    assert "NUMBA_CACHE_DIR" in notes[0]
    assert str(frozen / "site" / "charlstm" / "kernels" / "__pycache__") in notes[0]

    # NUMBA_CACHE_DIR keeps the kernels; the next start loads them instead of compiling.
    cache = tmp_path / "kernels-cache"
    env = {**env, "NUMBA_CACHE_DIR": str(cache)}
    kept = _charlstm(runner, env, "eval", run, corpus)
    assert kept.returncode == 0 and kept.stdout == reference_eval, kept.stderr
    assert not _lines(kept.stderr, "Note:")
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(p.suffix == ".nbc" for p in written)
    again = _charlstm(runner, env, "eval", run, corpus)
    assert again.returncode == 0 and again.stdout == reference_eval
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == written


# -- environment variables ----------------------------------------------------------------

def _missing_cpu_feature() -> str:
    """A feature LLVM knows that this CPU lacks (code using it would die of SIGILL)."""
    import llvmlite.binding as llvm

    missing = sorted(name for name, present in llvm.get_host_cpu_features().items()
                     if not present)
    return missing[0] if missing else "no-such-feature"


def _case(variable, value, *more, **extra):
    return pytest.param({variable: value, **extra}, variable, *more, id=f"{variable}={value}")


# Values that used to stop every kernel-running command with a traceback, or fill standard
# error with one; charlstm never uses Numba's threads, and OpenBLAS reads 0 or junk as its
# default.
@pytest.mark.parametrize("env, variable", [
    _case("NUMBA_NUM_THREADS", "0"), _case("NUMBA_NUM_THREADS", "-2"),
    _case("NUMBA_NUM_THREADS", "many"), _case("NUMBA_NUM_THREADS", ""),
    _case("OPENBLAS_NUM_THREADS", "0"), _case("OMP_NUM_THREADS", "junk"),
])
def test_a_thread_count_that_is_not_one_changes_nothing(run, reference_sample, env, variable):
    proc = run_cli("sample", run, *SAMPLE, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == reference_sample
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines()
                                        if line.startswith("reading ")]


# Values that work, with one line saying what they do and how to go without them.
@pytest.mark.parametrize("env, variable, kind", [
    _case("NUMBA_OPT", "fast", "Warning"),
    _case("NUMBA_BOUNDSCHECK", "yes", "Warning"),
    _case("NUMBA_DEBUG_CACHE", "1", "Warning"),  # Numba prints on standard output
    _case("NUMBA_CACHE_DIR", "/dev/null/kernels", "Note"),  # the in-tree cache serves
])
def test_a_variable_that_works_badly_is_named_in_one_line(run, reference_sample, env, variable,
                                                          kind):
    proc = run_cli("sample", run, *SAMPLE, env=env, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    named = _lines(proc.stderr, variable)
    assert len(named) == 1 and named[0].startswith(f"{kind}: "), proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 2  # and the line naming the checkpoint read
    if variable != "NUMBA_DEBUG_CACHE":
        assert proc.stdout == reference_sample


# Values the kernels cannot run under: refused in one line, while `info` still works.
@pytest.mark.parametrize("env, variable", [
    _case("NUMBA_DISABLE_JIT", "1"),
    _case("NUMBA_CPU_NAME", "no-such-cpu"),
    _case("NUMBA_CPU_FEATURES", f"+{_missing_cpu_feature()}"),
    _case("CHARLSTM_BLAS", "fastest"),
    _case("CHARLSTM_BLAS", "mkl", CHARLSTM_MKL_LIBRARY="/nonexistent/libmkl_rt.so"),
])
def test_a_variable_the_kernels_cannot_run_under_is_refused_in_one_line(run, tmp_path, env,
                                                                        variable):
    proc = run_cli("sample", run, *SAMPLE, env=env, check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("Error: ") and variable in proc.stderr
    train = run_cli("train", run.parent / "corpus.txt", *TINY, "--steps", "1", "--out",
                    tmp_path / "run", env=env, check=False)
    assert train.returncode == 1 and train.stderr == proc.stderr
    assert run_cli("info", run, env=env).returncode == 0


def test_kernels_compiled_under_numba_opt_0_are_kept_apart(run, tmp_path):
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "kernels-cache")}

    def kernel_files():  # one per kernel and signature: "<kernel>-<line>.py311.1.nbc"
        return sorted(p.name for p in (tmp_path / "kernels-cache").rglob("*.nbc"))

    corpus = run.parent / "corpus.txt"
    slow = run_cli("eval", run, corpus, env={**cache, "NUMBA_OPT": "0"})
    named = _lines(slow.stderr, "NUMBA_OPT")
    assert len(named) == 1 and named[0].startswith("Warning: "), slow.stderr[-3000:]
    assert "NumbaWarning" not in slow.stderr
    unoptimised = kernel_files()
    assert unoptimised
    # Before, the next start without NUMBA_OPT loaded those unoptimised kernels; now each
    # kernel gets a second entry ("<kernel>.2.nbc" beside "<kernel>.1.nbc").
    run_cli("eval", run, corpus, env=cache)
    kept = kernel_files()
    for name in unoptimised:
        kernel_name = name.rsplit(".", 2)[0]
        assert len([k for k in kept if k.rsplit(".", 2)[0] == kernel_name]) == 2, name
