"""The BLAS behind the products, chosen at run time: every installed library and every
copy of weight_hh gives the reference twin's numbers, a run resumes bit for bit on its
own choice, and a machine without the run's library continues with a warning."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from charlstm.training.config import TrainConfig, parse_step_weights
from charlstm.errors import UserError
from charlstm.kernels import blas_libraries
from charlstm.kernels.blas import BLAS, format_blas, matmul_nn, parse_blas
from charlstm.machine.tune import resolve, tune
from conftest import ROOT, make_text, run_cli, train_split_and_whole

LAYOUTS = ["stored/stored", "transposed/stored", "stored/transposed", "transposed/transposed",
           "panels/panels", "panels/transposed"]
PACKED_LAYOUTS = ["packed/packed", "packed/stored", "transposed/packed"]  # oneMKL's only
INSTALLED = blas_libraries.available()
MKL_MISSING = "mkl" not in INSTALLED
NO_MKL = "oneMKL is not installed here (the test extra installs it: pip install '.[test]')"


def library_param(name):
    marks = [pytest.mark.skipif(MKL_MISSING, reason=NO_MKL)] if name == "mkl" else []
    return pytest.param(name, marks=marks, id=name)


def test_choices_are_parsed_and_written_one_way():
    assert parse_blas("mkl") == ("mkl", "mkl")
    assert parse_blas("mkl/openblas") == ("mkl", "openblas")
    assert format_blas("openblas", "openblas") == "openblas"
    assert format_blas("mkl", "openblas") == "mkl/openblas"
    for bad in ("", "auto", "mkl/", "a/b/c", "blis", None):
        with pytest.raises(ValueError, match="LIBRARY or STEP/CHUNK"):
            parse_blas(bad)
    assert parse_step_weights("transposed/stored") == ("transposed", "stored")
    assert parse_step_weights("packed/stored") == ("packed", "stored")
    for bad in ("transposed", "stored/stored/stored", "T/N", 1):
        with pytest.raises(ValueError, match="FORWARD/BACKWARD"):
            parse_step_weights(bad)


def test_a_process_keeps_the_binding_its_kernels_were_linked_with():
    matmul_nn(np.ones((2, 2)), np.ones((2, 2)), np.empty((2, 2)))  # links the kernels
    BLAS.bind(BLAS.spec)  # the same choice is accepted
    other = "numpy" if BLAS.spec != "numpy" else "openblas"
    with pytest.raises(RuntimeError, match="a process of its own"):
        BLAS.bind(other)


def test_tune_measures_and_returns_a_concrete_choice():
    config = TrainConfig(hidden_size=32, num_layers=2, seq_len=8, batch_size=4, threads=2)
    choice = tune(config, 20, rounds=2)
    step, chunk = parse_blas(choice.blas)
    assert {step, chunk} <= set(INSTALLED)
    parse_step_weights(choice.step_weights)
    assert set(choice.timings["step_s"]) == set(INSTALLED)
    assert all(t > 0 for t in choice.timings["step_product_s"].values())
    # Restricted to one library, only the copy of weight_hh is left to choose.
    only = tune(config, 20, step_libraries=["openblas"], chunk_libraries=["openblas"], rounds=2)
    assert only.blas == "openblas" and only.timings["chunk_s"] == {}


def test_the_tuner_leaves_the_library_open(tmp_path):
    """tune() runs charlstm's panel kernels to time them; the process must still be free
    to bind whichever library the tuner then chooses (here: another one than its start).
    With an empty kernel cache, so the kernels compile as on a fresh machine (loaded from
    the cache, a kernel's callees are not compiled, and a fault hid)."""
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from charlstm.training.config import TrainConfig\n"
              "from charlstm.kernels.blas import BLAS\n"
              "from charlstm.machine.tune import tune\n"
              "choice = tune(TrainConfig(hidden_size=32, seq_len=8, batch_size=4), 20, rounds=1)\n"
              "assert 'panels/forward' in choice.timings['step_product_s']\n"
              "BLAS.bind('numpy')\n"
              "print(BLAS.spec)\n" % str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CHARLSTM_BLAS": "openblas",
                               "NUMBA_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["numpy"]


def test_resolve_keeps_explicit_choices_and_refuses_bad_ones():
    config = TrainConfig(hidden_size=8, num_layers=1, seq_len=4, batch_size=2)
    fixed, measured = resolve(config, 10, "openblas")
    assert (fixed.blas, fixed.step_weights, measured) == ("openblas", "stored/stored", None)
    fixed, _ = resolve(config, 10, "openblas", "transposed/stored")
    assert fixed.step_weights == "transposed/stored"
    auto, measured = resolve(config, 10, "auto")
    assert measured is not None and auto.blas == measured.blas
    for blas, weights in (("cublas", None), ("openblas", "sideways/stored"),
                          ("openblas", "packed/stored"), ("numpy/mkl", "stored/packed")):
        with pytest.raises(UserError):
            resolve(config, 10, blas, weights)


_NETWORK_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from charlstm.training.config import TrainConfig
from charlstm.kernels.blas import BLAS
from charlstm.model.parameters import init_params
from charlstm.model.network import Network
out = {{"bound": BLAS.spec, "runs": []}}
V, B, T, L = 7, 3, 5, 2
for cell in ("lstm", "rnn", "gru"):
    for layout in {layouts!r}:
        for dtype in (np.float64, np.float32):
            config = TrainConfig(cell=cell, hidden_size=6, num_layers=L, blas=BLAS.spec,
                                 step_weights=layout)
            params = init_params(config, V, np.random.default_rng(1), dtype=dtype)
            net = Network(config, V, params)
            rng = np.random.default_rng(2)
            x, y = rng.integers(V, size=(B, T)), rng.integers(V, size=(B, T))
            state = net.zero_state(B)
            state["h"][...] = rng.standard_normal(state["h"].shape) * 0.5
            h0 = state["h"].astype(np.float64).tolist()
            c0 = None
            if "c" in state:
                state["c"][...] = rng.standard_normal(state["c"].shape) * 0.5
                c0 = state["c"].astype(np.float64).tolist()
            loss = net.loss_and_grad(x, y, state)
            ws = net.workspace(T, B)
            out["runs"].append(dict(
                cell=cell, layout=layout, dtype=np.dtype(dtype).name, loss=float(loss),
                x=x.tolist(), y=y.tolist(), h0=h0, c0=c0,
                params={{k: np.asarray(v, np.float64).tolist() for k, v in params.items()}},
                grads={{k: np.asarray(v, np.float64).tolist() for k, v in net.grads.items()}},
                dh0=ws.dh0.astype(np.float64).tolist()))
print(json.dumps(out))
"""


def layouts_for(library: str) -> list[str]:
    return LAYOUTS + (PACKED_LAYOUTS if parse_blas(library)[0] == "mkl" else [])


def run_networks(library: str) -> dict:
    script = _NETWORK_SCRIPT.format(root=str(ROOT), layouts=layouts_for(library))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CHARLSTM_BLAS": library}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("library", [library_param(n) for n in ("openblas", "mkl", "numpy")]
                         + [pytest.param("mkl/openblas", id="mkl-steps",
                                         marks=pytest.mark.skipif(MKL_MISSING, reason=NO_MKL))])
def test_every_library_and_weight_copy_matches_the_reference(library):
    """Loss, every parameter gradient and dh0 of 2-layer lstm, rnn and gru networks, with
    each copy of weight_hh in each direction, against the NumPy twin: float64 to 1e-10,
    float32 to float32's rounding."""
    out = run_networks(library)
    assert out["bound"] == library
    assert len(out["runs"]) == 3 * len(layouts_for(library)) * 2
    for run in out["runs"]:
        params = {k: np.array(v) for k, v in run["params"].items()}
        c0 = None if run["c0"] is None else np.array(run["c0"])
        want_loss, want_grads, want_dh0, _, _, _ = ref.reference_loss_and_grads(
            run["cell"], params, np.array(run["x"]), np.array(run["y"]), np.array(run["h0"]), c0)
        rtol, atol = (1e-10, 1e-12) if run["dtype"] == "float64" else (2e-4, 2e-6)
        what = f"{library} {run['cell']} {run['layout']} {run['dtype']}"
        np.testing.assert_allclose(run["loss"], want_loss, rtol=rtol, err_msg=what)
        for name, grad in run["grads"].items():
            np.testing.assert_allclose(grad, want_grads[name], rtol=rtol, atol=atol,
                                       err_msg=f"{what} {name}")
        np.testing.assert_allclose(run["dh0"], want_dh0, rtol=rtol, atol=atol, err_msg=what)


TINY = ["--hidden-size", "16", "--num-layers", "2", "--seq-len", "8", "--batch-size", "6",
        "--threads", "2", "--quiet"]


@pytest.mark.parametrize("blas,weights", [("openblas", "transposed/stored"),
                                          ("openblas", "stored/transposed"),
                                          ("openblas", "panels/panels"),
                                          pytest.param("mkl", "packed/packed", marks=pytest.mark.skipif(MKL_MISSING, reason=NO_MKL)),
                                          pytest.param("mkl/openblas", "transposed/packed", marks=pytest.mark.skipif(MKL_MISSING, reason=NO_MKL))])
def test_resume_on_each_library_is_bit_identical(tmp_path, blas, weights):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    choice = ["--blas", blas, "--step-weights", weights, "--dropout", "0.2"]
    _, split = train_split_and_whole(tmp_path, corpus, [*TINY, *choice], 5)
    config = json.loads(run_cli("info", split, "--json").stdout)["config"]
    assert (config["blas"], config["step_weights"]) == (blas, weights)


def test_train_records_what_auto_measured(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    proc = run_cli("train", corpus, *TINY[:-1], "--steps", "2", "--out", tmp_path / "run")
    config = json.loads(run_cli("info", tmp_path / "run", "--json").stdout)["config"]
    step, chunk = parse_blas(config["blas"])
    assert {step, chunk} <= set(INSTALLED)
    parse_step_weights(config["step_weights"])
    assert f"step weights {config['step_weights']}" in proc.stderr
    assert "matrix products on" in proc.stderr


def test_an_unknown_blas_is_a_usage_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    proc = run_cli("train", corpus, *TINY, "--blas", "blis", "--steps", "1", "--out",
                   tmp_path / "r", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: BLAS choice 'blis'")
    assert not (tmp_path / "r" / "last.npz").exists()


@pytest.mark.skipif(MKL_MISSING, reason=NO_MKL)
def test_a_machine_without_the_runs_library_continues_on_openblas(tmp_path):
    """CHARLSTM_MKL_LIBRARY pointed at nothing stands for a machine without oneMKL."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--blas", "mkl", "--step-weights", "packed/transposed",
            "--steps", "3", "--out", run)
    gone = {"CHARLSTM_MKL_LIBRARY": str(tmp_path / "no-such-libmkl_rt.so")}
    proc = run_cli("train", corpus, *TINY, "--blas", "mkl", "--steps", "1", "--out",
                   tmp_path / "r2", env=gone, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "CHARLSTM_MKL_LIBRARY" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli("resume", run, "--steps", "5", env=gone)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "continuing on openblas" in warning[0]
    info = json.loads(run_cli("info", run, "--json").stdout)
    assert info["step"] == 5 and info["config"]["blas"] == "openblas"
    assert info["config"]["step_weights"] == "stored/transposed"  # nothing packs there
