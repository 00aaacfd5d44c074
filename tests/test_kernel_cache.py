"""Cached machine code never outlives the source it was compiled from: an edit anywhere in
the kernels package, even to a helper another module's kernel inlines, recompiles."""
import json
import shutil
import subprocess
import sys

from charlstm.kernels.jit import KERNELS_SOURCE_HASH, package_source_hash
from conftest import ROOT

_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from charlstm.kernels.lstm import lstm_step
B, H = 2, 3
gates = np.zeros((B, 4 * H), np.float64)
xproj = np.zeros((B, 4 * H), np.float64)
c_prev = np.ones((B, H))
c, h, tanh_c = np.empty((B, H)), np.empty((B, H)), np.empty((B, H))
lstm_step(gates, xproj, c_prev, c, h, tanh_c)
stats = lstm_step.stats
print(json.dumps({"c": c[0, 0], "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "path": stats.cache_path}))
"""


def run_kernel(checkout):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(checkout)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_edit_to_an_inlined_helper_recompiles_the_kernels_that_use_it(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "charlstm", checkout / "charlstm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    first = run_kernel(checkout)
    assert first["path"].startswith(str(checkout)), first
    assert first["misses"] == 1 and first["hits"] == 0
    # All gates 0: i = f = sigmoid(0) = 0.5, g = 0, so c = 0.5 * c_prev = 0.5.
    assert first["c"] == 0.5
    again = run_kernel(checkout)
    assert again == {**first, "misses": 0, "hits": 1}  # loaded from the cache

    # lstm_step lives in lstm.py; sigmoid, which it inlines, in activations.py.
    helpers = checkout / "charlstm" / "kernels" / "activations.py"
    text = helpers.read_text()
    assert "return 1.0 / (1.0 + np.exp(-x))" in text
    helpers.write_text(text.replace("return 1.0 / (1.0 + np.exp(-x))",
                                    "return 0.25 + 0.0 * x"))
    edited = run_kernel(checkout)
    assert edited["misses"] == 1 and edited["hits"] == 0
    assert edited["c"] == 0.25  # f = 0.25 now: the edit took effect


def test_the_stamp_covers_every_source_file_of_the_package(tmp_path):
    package = tmp_path / "kernels"
    shutil.copytree(ROOT / "charlstm" / "kernels", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert package_source_hash(package) == KERNELS_SOURCE_HASH
    (package / "blas.py").write_text((package / "blas.py").read_text() + "\n# an edit\n")
    assert package_source_hash(package) != KERNELS_SOURCE_HASH
