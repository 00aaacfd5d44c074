"""train/resume --precision through the installed command: bfloat16 where the CPU has it,
refused in one line where it has not, saved with the run and resumed bit for bit."""
from __future__ import annotations

import json
import os

import pytest

from charlstm.machine.cpu import bf16_missing
from conftest import make_text, run_cli, train_split_and_whole

TINY = ["--hidden-size", "32", "--num-layers", "2", "--seq-len", "16", "--batch-size", "8",
        "--quiet"]
needs_bf16 = pytest.mark.skipif(bf16_missing() is not None,
                                reason=f"bfloat16 products need AVX512_BF16: {bf16_missing()}")


def _features_without_bf16() -> str:
    """This CPU's features as LLVM names them, AVX512_BF16 taken away: what
    NUMBA_CPU_FEATURES gives charlstm to compile for a CPU without it."""
    import llvmlite.binding as llvm

    features = [f for f in llvm.get_host_cpu_features().flatten().split(",")
                if f and f[1:] != "avx512bf16"]
    return ",".join(features + ["-avx512bf16"])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(make_text(20000), encoding="utf-8")
    return path


def test_bfloat16_on_a_cpu_without_it_is_refused_in_one_line(tmp_path, corpus):
    env = {"NUMBA_CPU_FEATURES": _features_without_bf16()}
    proc = run_cli("train", corpus, *TINY, "--steps", "2", "--precision", "bfloat16",
                   "--out", tmp_path / "run", env=env, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "AVX512_BF16" in lines[0] and "--precision float32" in lines[0]
    assert not (tmp_path / "run").exists()


def test_auto_is_float32_without_bf16_products_and_bfloat16_with_them():
    import subprocess
    import sys

    code = "from charlstm.machine.cpu import resolve_precision; print(resolve_precision('auto'))"
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "NUMBA_CPU_FEATURES": _features_without_bf16()})
    assert without.stdout.strip() == "float32", without.stderr
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert here.stdout.strip() == ("float32" if bf16_missing() else "bfloat16"), here.stderr


@needs_bf16
def test_a_bfloat16_run_is_saved_as_such_and_resumes_bit_identically(tmp_path, corpus):
    whole, _ = train_split_and_whole(tmp_path, corpus, [*TINY, "--precision", "bfloat16",
                                                        "--dropout", "0.1"], 5)
    info = json.loads(run_cli("info", whole / "last.npz", "--json").stdout)
    assert info["config"]["precision"] == "bfloat16"


@needs_bf16
def test_a_run_changes_precision_on_resume_and_records_it(tmp_path, corpus):
    out = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "3", "--precision", "float32", "--out", out)
    run_cli("resume", out, "--steps", "6", "--precision", "bfloat16", "--quiet")
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    assert info["config"]["precision"] == "bfloat16"
    assert info["history"][-1]["changes"]["precision"] == ["float32", "bfloat16"]


@needs_bf16
def test_bfloat16_learns_what_float32_learns(tmp_path, corpus):
    """The same run in both precisions ends within a small margin of each other (on this
    learnable toy text, 1.126 against 1.126 bpc; a product left in the wrong precision or
    a lost gradient shows as far more)."""
    scores = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        run_cli("train", corpus, *TINY, "--steps", "200", "--lr", "0.01", "--precision",
                precision, "--out", out)
        scores[precision] = json.loads(run_cli("info", out / "last.npz", "--json").stdout)["best_val_bpc"]
    assert scores["float32"] < 1.5, scores  # it learned the words
    assert abs(scores["bfloat16"] - scores["float32"]) < 0.03, scores


def _has_mkl_bf16() -> bool:
    from charlstm.kernels import blas_libraries

    try:
        return blas_libraries.load("mkl").has_bf16
    except blas_libraries.LibraryUnavailable:
        return False


@needs_bf16
@pytest.mark.skipif(not _has_mkl_bf16(), reason="oneMKL's bfloat16 GEMM is not installed")
def test_a_run_on_onemkls_bfloat16_products_resumes_bit_identically(tmp_path, corpus):
    whole, _ = train_split_and_whole(tmp_path, corpus, [*TINY, "--precision", "bfloat16",
                                                        "--bf16-products", "mkl/mkl"], 4)
    info = json.loads(run_cli("info", whole / "last.npz", "--json").stdout)
    assert info["config"]["bf16_products"] == "mkl/mkl"


def test_bf16_products_are_refused_for_a_float32_run(tmp_path, corpus):
    proc = run_cli("train", corpus, *TINY, "--steps", "2", "--precision", "float32",
                   "--bf16-products", "panels", "--out", tmp_path / "run", check=False)
    assert proc.returncode == 1 and "--precision bfloat16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
