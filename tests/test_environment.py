"""An odd environment: a read-only install and home, and the variables Numba, OpenBLAS and
charlstm read at start-up. Each works, or charlstm says in one line which variable to
change, and commands that need no kernel never compile or even import one."""
import os

import pytest

from conftest import make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("environment")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    run_cli("train", corpus, *TINY, "--steps", "3", "--out", tmp / "run")
    return tmp / "run"


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
