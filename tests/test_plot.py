"""`charlstm plot RUN_DIR`: learning curves from metrics.jsonl as a PNG.

The command object is tested directly with click's CliRunner and in subprocesses, one of
them through the real `charlstm` group. Tests that draw need matplotlib (an optional
extra) and are skipped without it."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from charlstm.errors import UserError
from charlstm.cli import plot
from charlstm.tools.plot import MISSING_MATPLOTLIB, read_metrics
from conftest import ROOT, make_text, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# `charlstm plot ...`, with a prelude run first in the same process.
AS_CHARLSTM = "import sys; {prelude}from charlstm.cli import main; main(prog_name='charlstm')"


def needs_matplotlib():
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib: pip install 'charlstm[plot]'")


def run_python(code, *args):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def charlstm_plot(*args, prelude=""):
    return run_python(AS_CHARLSTM.format(prelude=prelude), "plot", *args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plot")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(6000), encoding="utf-8")
    out = tmp / "run"
    run_cli("train", corpus, "--hidden-size", "16", "--num-layers", "1", "--seq-len", "16",
            "--batch-size", "4", "--steps", "40", "--eval-every", "10", "--log-every", "5",
            "--quiet", "--out", out)
    return out


def test_read_metrics(run):
    curves = read_metrics(run)
    assert [p[0] for p in curves.train] == list(range(5, 41, 5))
    assert [p[0] for p in curves.val] == [10, 20, 30, 40]
    elapsed = [p[1] for p in curves.train]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [p[2] for p in curves.val] == [r["val_bpc"] for r in rows if "val_bpc" in r]


def check_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(str(path))
    assert image.shape[:2] == (450, 1100)
    assert image[..., :3].std() > 0.05  # something is drawn


def test_plot_writes_curve_png_in_the_run_directory(run):
    needs_matplotlib()
    result = CliRunner().invoke(plot, [str(run)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{run / 'curve.png'}\n"
    check_png(run / "curve.png")


def test_plot_output_option(run, tmp_path):
    needs_matplotlib()
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(plot, [str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    check_png(out)


def test_plot_command_object_is_callable_in_a_subprocess(run, tmp_path):
    needs_matplotlib()
    out = tmp_path / "out.png"
    proc = run_python("from charlstm.cli import plot; plot()", run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    check_png(out)


def test_plot_as_a_charlstm_command(run, tmp_path):
    needs_matplotlib()
    out = tmp_path / "c.png"
    proc = charlstm_plot(run, "--output", out)
    assert proc.returncode == 0, proc.stderr
    check_png(out)
    help_text = charlstm_plot("--help").stdout
    assert "Usage: charlstm plot [OPTIONS] RUN_DIR" in help_text
    assert "learning curves" in help_text and "RUN_DIR/curve.png" in help_text


def metrics_dir(tmp_path, text):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text(text)
    return d


def user_error(args):
    result = CliRunner().invoke(plot, list(map(str, args)))
    assert result.exit_code != 0 and isinstance(result.exception, UserError), result
    return str(result.exception)


def test_missing_or_unusable_runs_are_user_errors(tmp_path):
    assert "no such run directory" in user_error([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    assert "holds no metrics.jsonl" in user_error([tmp_path / "empty"])
    assert "no bits-per-character values" in user_error([metrics_dir(tmp_path, "")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('[1, 2]\n{"step": 5, "elapsed": 1.0}\n')
    assert "holds no bits-per-character values yet (skipped line 1 of" in user_error([bad])


def test_rows_without_values_are_skipped_and_other_lines_named(tmp_path):
    d = metrics_dir(tmp_path, '{"step": 5, "elapsed": 1.0, "train_bpc": 3.1}\n\n'
                              '{"step": 10, "elapsed": 2.0, "train_bpc": 2.9, "val_bpc": 3.0}\n'
                              '[1, 2]\n'
                              '{"step": 15, "elapsed": 3.0, "train_bpc": Infinity}\n')
    warnings = []
    curves = read_metrics(d, warn=warnings.append)
    assert curves.train == [(5, 1.0, 3.1), (10, 2.0, 2.9)] and curves.val == [(10, 2.0, 3.0)]
    assert warnings == [f"skipped line 4 of {d / 'metrics.jsonl'}: not a whole record (cut off "
                        f"or zero-filled by a crash?)"]


def test_errors_are_one_line_through_the_cli(tmp_path):
    proc = charlstm_plot(tmp_path / "nope")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope'}: no such run directory"]


def test_without_matplotlib(tmp_path, monkeypatch):
    d = metrics_dir(tmp_path, '{"step": 5, "elapsed": 1.0, "train_bpc": 3.1}\n')
    # None in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert user_error([d]) == MISSING_MATPLOTLIB
    proc = charlstm_plot(d, prelude="sys.modules['matplotlib'] = None; ")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: {MISSING_MATPLOTLIB}"]
    assert not (d / "curve.png").exists()
