"""Where charlstm writes, outside the happy path, on the real CLI: an export that would
replace what it reads or a run's own files; a full disk (a real one: a small tmpfs,
filled, and /dev/full for standard output) and a file size limit (ulimit -f) under
every writer and every command that prints; the permissions of what it writes; and the
logs a crash cut off or zero-filled, read back by the commands that plot, export or
report them."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import CHARLSTM, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]
FORMATS = ("safetensors", "onnx", "hf", "tensorboard")
OUTPUT_NAME = {"safetensors": "m.safetensors", "onnx": "m.onnx", "hf": "hf", "tensorboard": "tb"}
# sh's ulimit -f counts 512-byte blocks: every file in question is larger.
SIZE_LIMIT = 'ulimit -f 1 && exec "$@"'


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run with a metrics row a step (six), its corpus beside it."""
    pytest.importorskip("safetensors", reason="the export tests need pip install 'charlstm[safetensors]'")
    pytest.importorskip("onnx", reason="the export tests need pip install 'charlstm[onnx]'")
    pytest.importorskip("tensorboardX", reason="the export tests need pip install 'charlstm[tensorboard]'")
    pytest.importorskip("matplotlib", reason="the plot tests need pip install 'charlstm[plot]'")
    tmp = tmp_path_factory.mktemp("writers")
    corpus = tmp / "c.txt"
    corpus.write_text(make_text(6000))
    out = tmp / "run"
    run_cli("train", corpus, *TINY, "--steps", "6", "--log-every", "1", "--out", out)
    return out


@pytest.fixture
def own_run(run, tmp_path):
    """A copy of ``run`` that a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.fixture
def full_disk(tmp_path):
    """A real filesystem with no room left: a 64 KiB tmpfs, filled by the file filler."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; the ulimit -f tests cover a full disk")
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}); the "
                    f"ulimit -f tests cover a full disk")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def sh(line: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`charlstm ARGS` run as "$@" of the sh command line ``line``."""
    return subprocess.run(["sh", "-c", line, "sh", *CHARLSTM, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc, *words):
    """Exit status 1, the last line of stderr its only error, holding ``words``, and
    no traceback of any kind."""
    assert proc.returncode == 1, proc.stderr
    for noise in ("Traceback", "Exception ignored", "Exception in thread"):
        assert noise not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == lines[-1:], proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def files_under(root) -> dict:
    """Every file below ``root`` (symlinks as their targets' names) and its content hash."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                found[key] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    found[key] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_an_export_never_replaces_a_checkpoint_a_runs_files_or_its_input(own_run, tmp_path):
    (tmp_path / "link.npz").symlink_to(own_run / "last.npz")
    (tmp_path / "runlink").symlink_to(own_run)
    shutil.copy(own_run / "last.npz", tmp_path / "kept.npz")
    refused = [
        (own_run, "onnx", own_run / "last.npz"),  # the run's own checkpoints
        (own_run, "safetensors", own_run / "best.npz"),
        (own_run, "onnx", f"{own_run}/../run/./metrics.jsonl"),  # any spelling
        (own_run, "onnx", own_run / ".lock"),
        (own_run, "onnx", own_run / "tokens" / "ids.onnx"),
        (own_run, "onnx", own_run / "best-before-step-4.npz"),
        (own_run, "onnx", tmp_path / "link.npz"),  # a symlink to a run's checkpoint
        (own_run, "safetensors", tmp_path / "runlink" / "last.npz"),
        (tmp_path / "kept.npz", "onnx", tmp_path / "kept.npz"),  # the input itself
        (tmp_path / "link.npz", "safetensors", own_run / "last.npz"),
        (own_run, "onnx", tmp_path / "kept.npz"),  # a checkpoint anywhere
        (own_run, "hf", own_run),  # a folder that is a run, or inside one
        (own_run, "hf", own_run / "hf"),
        (own_run, "tensorboard", own_run / "tensorboard"),
        (own_run, "tensorboard", own_run),
    ]
    before = files_under(tmp_path)
    for source, fmt, output in refused:
        proc = run_cli("export", source, "--format", fmt, "-o", output, check=False)
        assert_one_line_error(proc, f"-o {Path(output)}", "choose another -o")
        assert files_under(tmp_path) == before, (fmt, output)
    # Beside a run's files, an export is welcome.
    run_cli("export", own_run, "--format", "onnx", "-o", own_run / "model.onnx")
    run_cli("resume", own_run, "--steps", "7", "--quiet")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_to_a_full_disk_is_one_line_and_leaves_nothing(run, full_disk, fmt):
    # A folder's missing parents are made, and go again with it.
    output = full_disk / ("exports" if fmt in ("hf", "tensorboard") else "") / OUTPUT_NAME[fmt]
    proc = run_cli("export", run, "--format", fmt, "-o", output, check=False)
    assert os.listdir(full_disk) == ["filler"]  # no cut file, temporary or folder left
    assert_one_line_error(proc, "No space left on device", "nothing was written")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_past_a_file_size_limit_is_one_line_and_leaves_nothing(run, tmp_path, fmt):
    exports = tmp_path / "exports"
    exports.mkdir()
    proc = sh(SIZE_LIMIT, "export", run, "--format", fmt, "-o", exports / OUTPUT_NAME[fmt])
    assert os.listdir(exports) == []
    assert_one_line_error(proc, "File too large", "nothing was written")


def _printing_commands(run, tmp_path):
    """Every command that prints to standard output, as (name, arguments)."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.jsonl").write_text(json.dumps(
        {"trial": "trial-0", "run_dir": str(run), "status": "finished",
         "options": {"hidden_size": 16}, "metric": 3.5, "steps": 6}) + "\n")
    corpus = run.parent / "c.txt"
    return [("info", ["info", run]), ("info --json", ["info", run, "--json"]),
            ("info --toml", ["info", run, "--toml"]), ("eval", ["eval", run, corpus]),
            ("sample", ["sample", run, "--length", "50"]), ("baseline", ["baseline", corpus]),
            ("gradcheck", ["gradcheck", "--cell", "rnn"]),
            ("gradflow", ["gradflow", run, corpus, "--length", "8", "--chunks", "2"]),
            ("sweep --report", ["sweep", "--report", sweep]),
            ("export", ["export", run, "--format", "onnx", "-o", tmp_path / "m.onnx"]),
            ("plot", ["plot", run, "-o", tmp_path / "curve.png"])]


def test_every_command_that_prints_says_in_one_line_that_stdout_is_full(run, tmp_path):
    for name, args in _printing_commands(run, tmp_path):
        proc = sh('exec "$@" > /dev/full', *args)
        assert_one_line_error(proc, "cannot write standard output (No space left on device)")


@pytest.mark.parametrize("args", [["info", "--json"], ["sample", "--length", "3000"]],
                         ids=["info --json", "sample"])
def test_stdout_past_a_file_size_limit_is_one_line_never_cut_silently(run, tmp_path, args):
    # Python's own stdout dropped what a partial write left over: info exited 0 with
    # its JSON cut at 512 bytes.
    proc = sh('ulimit -f 1 && exec "$@" > "$OUT"', args[0], run, *args[1:],
              env={"OUT": str(tmp_path / "out.txt")})
    assert_one_line_error(proc, "cannot write standard output (File too large)")


def test_a_sample_to_a_full_disk_is_one_line(run, full_disk):
    proc = sh('exec "$@" > "$OUT"', "sample", run, "--length", "100000",
              env={"OUT": str(full_disk / "sample.txt")})
    assert_one_line_error(proc, "cannot write standard output (No space left on device)")


@pytest.mark.parametrize("umask", [0o027])  # clears group write and all of other: neither the default nor a no-op
def test_every_file_an_export_or_a_plot_writes_follows_the_umask(run, tmp_path, umask):
    out = tmp_path / "out"
    out.mkdir()
    commands = [["export", run, "--format", fmt, "-o", out / OUTPUT_NAME[fmt]] for fmt in FORMATS]
    commands += [["plot", run, "-o", out / "curve.png"],
                 ["gradflow", run, run.parent / "c.txt", "--length", "8", "--chunks", "2",
                  "-o", out / "flow.png"]]
    for args in commands:
        proc = sh(f'umask {umask:03o} && exec "$@"', *args)
        assert proc.returncode == 0, proc.stderr
    paths = [p for p in out.rglob("*")]
    assert {p.relative_to(out).parts[0] for p in paths} == {
        "m.safetensors", "m.onnx", "hf", "tb", "curve.png", "flow.png"}
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path


def test_plots_to_a_full_disk_or_past_a_size_limit_leave_no_cut_png(run, full_disk, tmp_path):
    corpus = run.parent / "c.txt"
    for args in (["plot", run, "-o", full_disk / "curve.png"],
                 ["gradflow", run, corpus, "--length", "8", "--chunks", "2", "-o", full_disk / "flow.png"]):
        assert_one_line_error(run_cli(*args, check=False), "No space left on device")
    assert os.listdir(full_disk) == ["filler"]
    limited = tmp_path / "limited"
    limited.mkdir()
    for args in (["plot", run, "-o", limited / "curve.png"],
                 ["gradflow", run, corpus, "--length", "8", "--chunks", "2", "-o", limited / "flow.png"]):
        assert_one_line_error(sh(SIZE_LIMIT, *args), "File too large")
    assert os.listdir(limited) == []


def test_a_resume_that_cannot_rewrite_metrics_jsonl_keeps_it_whole(own_run):
    metrics = own_run / "metrics.jsonl"
    before = metrics.read_bytes()
    assert len(before) > 512
    proc = sh(SIZE_LIMIT, "resume", own_run, "--steps", "8", "--quiet")
    assert_one_line_error(proc, "metrics.jsonl", "File too large", "kept as it was")
    assert metrics.read_bytes() == before
    assert sorted(p.name for p in own_run.iterdir()) == [".lock", "best.npz", "last.npz",
                                                         "metrics.jsonl", "tokens"]
    run_cli("resume", own_run, "--steps", "8", "--quiet")  # and nothing stands in the way


def test_training_with_tensorboard_on_a_full_disk_stops_in_one_line(run, full_disk, tmp_path):
    out = tmp_path / "r"
    proc = run_cli("train", run.parent / "c.txt", *TINY, "--steps", "6", "--log-every", "1",
                   "--out", out, "--tensorboard", full_disk / "tb", check=False, timeout=120)
    assert_one_line_error(proc, "TensorBoard", "No space left on device", "checkpoint intact")
    run_cli("resume", out, "--steps", "6", "--quiet")


def _damaged(metrics: bytes) -> dict:
    """metrics.jsonl as a crash leaves it: name -> (content, the line left out)."""
    lines = metrics.split(b"\n")
    return {
        "cut": (metrics[:-10], 6),
        "zero-filled tail": (metrics + b"\0" * 4096, 7),
        "zero-filled block": (b"\n".join(lines[:2] + [b"\0" * len(lines[2])] + lines[3:]), 3),
    }


def _unusable(metrics: bytes) -> dict:
    return {"empty": b"", "zeros only": b"\0" * 4096, "missing": None}


def _put(path, content):
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)


def _event_steps(directory, tag="bpc/train"):
    from tensorboardX.proto import event_pb2

    steps = []
    for path in directory.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_plot_reads_the_whole_lines_of_a_damaged_metrics_jsonl(own_run, tmp_path):
    path = own_run / "metrics.jsonl"
    intact = path.read_bytes()
    for name, (content, skipped) in _damaged(intact).items():
        _put(path, content)
        png = tmp_path / f"{name}.png"
        proc = run_cli("plot", own_run, "-o", png, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"Warning: skipped line {skipped} of {path}: not a whole record (cut off or "
            f"zero-filled by a crash?)"], name
        assert png.stat().st_size > 0
    for name, content in _unusable(intact).items():
        _put(path, content)
        assert_one_line_error(run_cli("plot", own_run, check=False), str(own_run))


def test_a_tensorboard_export_reads_the_whole_lines_of_a_damaged_metrics_jsonl(own_run, tmp_path):
    path = own_run / "metrics.jsonl"
    intact = path.read_bytes()
    steps = [json.loads(line)["step"] for line in intact.decode().splitlines()]
    for name, (content, skipped) in _damaged(intact).items():
        _put(path, content)
        out = tmp_path / name
        proc = run_cli("export", own_run, "--format", "tensorboard", "-o", out, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"Warning: skipped line {skipped} of {path}: not a whole record (cut off or "
            f"zero-filled by a crash?)"], name
        kept = [step for k, step in enumerate(steps, 1) if k != skipped]
        assert proc.stdout.startswith(f"{len(kept)} metrics rows written")
        assert _event_steps(out) == kept
    for name, content in _unusable(intact).items():
        _put(path, content)
        out = tmp_path / f"{name}-out"
        proc = run_cli("export", own_run, "--format", "tensorboard", "-o", out, check=False)
        assert_one_line_error(proc, "metrics.jsonl")
        assert not out.exists(), name


def test_sweep_report_reads_the_whole_lines_of_a_cut_sweep_jsonl(tmp_path):
    records = [{"trial": f"trial-{k}", "run_dir": str(tmp_path / f"trial-{k}"),
                "status": "finished", "options": {"hidden_size": 8 * k}, "metric": 3.0 - k,
                "steps": 6} for k in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / "sweep.jsonl"
    path.write_text(text[:-20])
    proc = run_cli("sweep", "--report", tmp_path, "--json")
    assert [r["trial"] for r in json.loads(proc.stdout)] == ["trial-2", "trial-1"]
    assert proc.stderr.strip().splitlines() == [
        f"Warning: skipped line 3 of {path}: not a whole record (cut off or zero-filled by a "
        f"crash?); a new run of the sweep takes their trials up again"]
    path.write_bytes(b"\0" * 300)
    assert_one_line_error(run_cli("sweep", "--report", tmp_path, check=False), "sweep.jsonl")


SWEEP = """
[train]
corpus = ["{corpus}"]
num_layers = 1
seq_len = 16
batch_size = 4
steps = 4
blas = "openblas"
step_weights = "stored/stored"

[grid]
hidden_size = [8, 16]

[sweep]
out = "{out}"
"""


def test_a_sweep_after_a_crash_cut_its_sweep_jsonl_records_every_trial(run, tmp_path):
    pytest.importorskip("distributed", reason="the sweep tests need Dask: pip install 'charlstm[sweep]'")
    out = tmp_path / "out"
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP.format(corpus=run.parent / "c.txt", out=out))
    run_cli("sweep", spec, "--workers", "2", "--quiet")
    results = out / "sweep.jsonl"
    whole = results.read_text().splitlines()
    assert len(whole) == 2
    results.write_text(whole[0] + "\n" + whole[1][:-15])  # the crash cut the last line
    proc = run_cli("sweep", spec, "--workers", "2", "--quiet")
    assert f"Warning: skipped line 2 of {results}" in proc.stderr
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "finished" for line in lines)
    report = json.loads(run_cli("sweep", "--report", out, "--json").stdout)
    assert sorted(r["options"]["hidden_size"] for r in report) == [8, 16]
