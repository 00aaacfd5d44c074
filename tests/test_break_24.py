"""Just outside what issue 24's fixes cover, on the real command: a Ctrl-C while the
command line loads, --help on a full disk, a full disk under the token cache and the run
lock, outputs that are devices, pipes or symbolic links, a plot or gradient plot aimed
at a run's files or at its own input, logs and sweep results damaged after a crash,
configuration files cut inside a character, corpus names that are not UTF-8, and
durations written in other ways."""
import json
import os
import pty
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import CHARLSTM, make_text, run_cli
from test_writers import assert_one_line_error, files_under, sh

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "8", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run with a metrics row a step, its corpus c.txt beside it."""
    tmp = tmp_path_factory.mktemp("break")
    (tmp / "c.txt").write_text(make_text(6000))
    out = tmp / "run"
    run_cli("train", tmp / "c.txt", *TINY, "--steps", "4", "--log-every", "1", "--out", out)
    return out


# A stand-in for a slow disk or a busy machine: the import of click, the command line's
# first, waits until the test has sent its signal (a marker file says it is waiting).
SLOW_IMPORT = '''
import os, sys, time
class _Slow:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            sys.meta_path.remove(self)
            open(os.environ["CHARLSTM_TEST_MARKER"], "w").close()
            time.sleep(30)
        return None
sys.meta_path.insert(0, _Slow())
'''


def test_ctrl_c_while_the_command_line_loads_ends_quietly(run, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SLOW_IMPORT)
    marker = tmp_path / "loading"
    env = {**os.environ, "CHARLSTM_TEST_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([*CHARLSTM, "info", str(run)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), (proc.returncode, err)


@pytest.mark.parametrize("line", ['exec "$@" > /dev/full', 'ulimit -f 0 && exec "$@" > "$OUT"'],
                         ids=["/dev/full", "ulimit -f"])
def test_help_and_version_on_a_full_disk_are_one_line(tmp_path, line):
    for args in (["--help"], ["--version"], ["train", "--help"]):
        proc = sh(line, *args, env={"OUT": str(tmp_path / "out.txt")})
        assert_one_line_error(proc, "cannot write standard output")


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs): ``fill(free)`` leaves ``free`` bytes of it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()})")

    def fill(free: int) -> Path:
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * (64 * 1024 - free))
        return mount
    try:
        yield fill
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("free", [0, 16384], ids=["full", "room for a quarter of the ids"])
def test_training_onto_a_full_disk_is_one_line_never_a_bus_error(small_disk, tmp_path, free):
    # The token cache (40 KB of ids) was written through a memory map, and a full disk
    # killed the process with SIGBUS ("Bus error", status 135) and no word; with no room
    # at all, writing the lock's process id was a traceback.
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(40_000))
    disk = small_disk(free)
    proc = run_cli("train", corpus, *TINY, "--steps", "2", "--out", disk / "run", check=False)
    assert_one_line_error(proc, "No space left on device")
    assert [p.name for p in disk.rglob("*.tmp")] == []  # no temporary left behind


def test_a_plot_never_replaces_a_checkpoint_a_runs_files_or_what_it_reads(run, tmp_path):
    # `plot RUN -o RUN/last.npz` wrote a PNG over the run's checkpoint, and `gradflow
    # CKPT TEXT -o TEXT` over the text it had just read.
    shutil.copytree(run, tmp_path / "run")
    own, corpus = tmp_path / "run", tmp_path / "c.txt"
    shutil.copy(run.parent / "c.txt", corpus)
    flow = ["--length", "8", "--chunks", "2"]
    refused = [["plot", own, "-o", own / "last.npz"],
               ["plot", own, "-o", own / "metrics.jsonl"],
               ["gradflow", own, corpus, *flow, "-o", corpus],
               ["gradflow", own / "last.npz", corpus, *flow, "-o", own / "best.npz"]]
    before = files_under(tmp_path)
    for args in refused:
        proc = run_cli(*args, check=False)
        assert_one_line_error(proc, f"-o {args[-1]}", "choose another -o")
        assert files_under(tmp_path) == before, args
    run_cli("plot", own)  # RUN/curve.png, beside the run's files, is welcome


def test_an_output_that_is_a_pipe_a_device_or_a_link_stays_one(run, tmp_path):
    # Every file was written to a temporary and renamed over its path: -o /dev/null
    # (as root) put a plain file in the place of the device, a FIFO's reader waited for
    # ever, and a symbolic link was replaced by the file instead of leading to it.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run_cli("export", run, "--format", "safetensors", "-o", fifo)
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and received and len(received[0]) > 1000
    link = tmp_path / "curve.png"
    link.symlink_to(tmp_path / "plots" / "made.png")
    (tmp_path / "plots").mkdir()
    run_cli("plot", run, "-o", link)
    assert link.is_symlink() and (tmp_path / "plots" / "made.png").read_bytes()[:4] == b"\x89PNG"
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        return  # only root makes devices; the pipe stands for them
    run_cli("export", run, "--format", "onnx", "-o", null)
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_logs_read_back_leave_out_lines_with_values_of_the_wrong_kind(run, tmp_path):
    # Valid JSON whose values are not what charlstm writes (a hand edit, a merge, a
    # damaged line that still parses) was a traceback in the exporter and the report.
    shutil.copytree(run, tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    rows[1] = json.dumps({**json.loads(rows[1]), "train_bpc": "n/a"})
    metrics.write_text("\n".join(rows) + "\n")
    proc = run_cli("export", tmp_path / "run", "--format", "tensorboard", "-o", tmp_path / "tb")
    assert "Traceback" not in proc.stderr and "skipped line 2 of" in proc.stderr, proc.stderr
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    good = {"trial": "trial-1", "status": "finished", "metric": 3.5, "steps": 4,
            "options": {"lr": 0.01}}
    (sweep / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        good, {**good, "trial": "trial-2", "metric": "3.4"}, {**good, "trial": "trial-3", "options": [1]}]))
    proc = run_cli("sweep", "--report", sweep)
    assert "Traceback" not in proc.stderr and "skipped 2 lines (2-3)" in proc.stderr, proc.stderr
    assert "trial-1" in proc.stdout


def _sweep_file(run, tmp_path) -> Path:
    """A sweep of one tiny trial on ``run``'s corpus, out in tmp_path/out."""
    spec = tmp_path / "s.toml"
    spec.write_text(
        f"[sweep]\nout = '{tmp_path / 'out'}'\n[train]\ncorpus = ['{run.parent / 'c.txt'}']\n"
        "hidden_size = 16\nnum_layers = 1\nseq_len = 8\nbatch_size = 4\nblas = 'openblas'\n"
        "step_weights = 'stored/stored'\nsteps = 3\n[grid]\nlr = [0.01]\n")
    return spec


def test_a_sweep_takes_up_a_trial_whose_result_a_crash_damaged(run, tmp_path):
    # trial.json zero-filled (a crash on a filesystem that does not order its writes)
    # was read as the trial's result: the trial failed with "Expecting value: line 1
    # column 1 (char 0)" on every try and every run of the sweep.
    pytest.importorskip("distributed", reason="sweeps need pip install 'charlstm[sweep]'")
    spec = _sweep_file(run, tmp_path)
    run_cli("sweep", spec, "--workers", "1", "--quiet")
    (result,) = (tmp_path / "out").glob("trial-*/trial.json")
    for damaged in (result, tmp_path / "out" / "sweep.jsonl"):
        damaged.write_bytes(b"\0" * damaged.stat().st_size)
    proc = run_cli("sweep", spec, "--workers", "1", "--quiet")
    assert "failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert json.loads(result.read_text())["status"] == "finished"


def test_an_hf_export_of_a_corpus_whose_file_name_is_not_utf8(tmp_path):
    # A directory walk keeps a cp1252 name (b"caf\xe9.txt") as surrogate escapes; the
    # model card, written as UTF-8, was a UnicodeEncodeError traceback.
    data = tmp_path / "data"
    data.mkdir()
    (data / os.fsdecode(b"caf\xe9.txt")).write_text(make_text(6000))
    run_cli("train", data, *TINY, "--steps", "2", "--out", tmp_path / "run")
    run_cli("export", tmp_path / "run", "--format", "hf", "-o", tmp_path / "hf")
    assert "caf\ufffd.txt" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_a_toml_file_cut_inside_a_character_or_mixing_encodings_is_never_told_iconv(run, tmp_path):
    # Both were told "it reads as cp1252 (or euc-jp): iconv -f cp1252 ...", which turns
    # the file's UTF-8 "données" into "donnÃ©es".
    head = "# données de café\n[train]\nhidden_size = 16\n".encode()
    cut, mixed = tmp_path / "cut.toml", tmp_path / "mixed.toml"
    cut.write_bytes(head + "# résumé".encode()[:-1])
    mixed.write_bytes(head + "# résumé\n".encode("cp1252"))
    for args, words in ((["train", "--config", cut, "--steps", "1"], ["cut off inside its last character"]),
                        (["sweep", cut, "--dry-run"], ["cut off inside its last character"]),
                        (["train", "--config", mixed, "--steps", "1"], ["mixes UTF-8 with text in cp1252"])):
        proc = run_cli(*args, check=False)
        assert_one_line_error(proc, *words)
        assert "iconv" not in proc.stderr, proc.stderr
    # A text cut inside its last character was told "--encoding euc-jp", which leaves
    # the cut byte waiting for a character that never comes, and fails the same way.
    text = tmp_path / "t.txt"
    text.write_bytes(b"the cat sat on the mat caf\xc3")
    proc = run_cli("eval", run, text, check=False)
    suggested = re.search(r"--encoding (\S+?)\)", proc.stderr).group(1)
    text.read_bytes().decode(suggested)


@pytest.mark.parametrize("given, told", [
    ("00:10:00", "give the duration with units: 10m"),  # as Slurm writes a time limit
    ("1h30", "its last number, 30, has no unit: give 1h30m"),
    ("1d", "a duration's units are h, m and s: give 24h"),
    ("10min", "a duration's units are h, m and s: give 10m"),
], ids=["clock", "last number", "days", "min"])
def test_a_duration_written_another_way_is_told_what_to_write(given, told):
    # "'00:10:00' has no unit: give 00s, 00m or 00h", "'1h30' has no unit: give 30s, 30m
    # or 30h" and "'1d' has no unit" said what was not so.
    proc = run_cli("train", "--time", given, "--steps", "1", check=False)
    assert proc.returncode == 2 and told in proc.stderr, proc.stderr



def test_plotting_with_a_home_that_cannot_be_written_says_so_in_one_line(run, tmp_path):
    # matplotlib's own words were two warnings, one of them 300 characters long.
    pytest.importorskip("matplotlib", reason="the plot tests need pip install 'charlstm[plot]'")
    env = {"HOME": "/dev/null", "MPLCONFIGDIR": "", "XDG_CONFIG_HOME": "", "XDG_CACHE_HOME": ""}
    proc = run_cli("plot", run, "-o", tmp_path / "curve.png", env=env)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Note: matplotlib cannot write /dev/null/"), lines
    assert "MPLCONFIGDIR" in lines[0]


def test_an_export_into_the_corpus_folder_does_not_change_the_runs_text(run, tmp_path):
    # The hf folder's model card and JSON files were read as corpus files: the run's
    # resume said "the corpus changed since the checkpoint was written".
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(run.parent / "c.txt", data / "c.txt")
    run_cli("train", data, *TINY, "--steps", "2", "--out", tmp_path / "run")
    run_cli("export", tmp_path / "run", "--format", "hf", "-o", data / "model")
    proc = run_cli("resume", tmp_path / "run", "--steps", "3", check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"model{os.sep}: a charlstm export" in proc.stderr, proc.stderr


def test_a_command_whose_product_is_printed_refuses_a_closed_output(run, tmp_path):
    # `sample >&-` said so, while info, eval and the others exited 0 having shown nothing.
    corpus = run.parent / "c.txt"
    for args in (["info", run], ["eval", run, corpus], ["baseline", corpus],
                 ["gradflow", run, corpus, "--length", "8", "--chunks", "2"]):
        proc = sh('exec "$@" >&-', *args)
        assert_one_line_error(proc, "standard output is closed", "redirect it")


def test_a_sample_to_a_terminal_that_closed_is_one_line(run, tmp_path):
    # An SSH session drops: writes to its terminal fail (EIO) before the SIGHUP
    # arrives, if one does at all, and sample ended in a traceback.
    master, slave = pty.openpty()
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([*CHARLSTM, "sample", str(run), "--length", "100000000"],
                                stdin=slave, stdout=slave, stderr=err, start_new_session=True)
    os.close(slave)
    try:
        assert os.read(master, 1024)  # sampling has begun
        os.close(master)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "",
                                                      (tmp_path / "err.txt").read_text()),
                          "cannot write standard output (Input/output error)")


def test_eval_reads_a_pipe_and_names_a_directory(run, tmp_path):
    # Both were "no such file": a directory that is there, and `<(zcat text.gz)`.
    proc = run_cli("eval", run, tmp_path, check=False)
    assert_one_line_error(proc, f"{tmp_path} is a directory")
    proc = subprocess.run(["bash", "-c", 'exec "$@" <(cat "$TEXT")', "bash", *CHARLSTM, "eval", str(run)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TEXT": str(run.parent / "c.txt")})
    assert proc.returncode == 0 and float(proc.stdout) > 0, proc.stderr


def test_a_sweep_under_mpiexec_is_refused_and_its_trials_are_no_ranks(run, tmp_path):
    # `mpiexec -n 2 charlstm sweep` ran two sweeps (bench: two benchmarks fighting over
    # the cores), and every trial failed with "exit status 1": each inherited mpiexec's
    # variables and took itself for a rank of the job. Dask workers that a launcher
    # started (dask-mpi, srun) passed them on too.
    pytest.importorskip("distributed", reason="sweeps need pip install 'charlstm[sweep]'")
    if shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec here")
    spec = _sweep_file(run, tmp_path)
    proc = subprocess.run(["mpiexec", "-n", "2", *CHARLSTM, "sweep", str(spec), "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "one of 2 processes that mpiexec started", "without mpiexec")
    assert not (tmp_path / "out").exists()
    proc = subprocess.run(["mpiexec", "-n", "2", *CHARLSTM, "bench", "--config", "S"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "one of 2 processes that mpiexec started", "take the same cores")
    # A worker with a launcher's variables, on a scheduler of its own.
    address = tmp_path / "scheduler.json"
    started = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
         "0", "--dashboard-address", ":0", "--scheduler-file", str(address)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        started.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(address),
             "--nthreads", "1", "--no-dashboard"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "PMI_SIZE": "2", "PMI_RANK": "1"}))
        deadline = time.monotonic() + 60
        while not address.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        scheduler = json.loads(address.read_text())["address"]
        proc = run_cli("sweep", spec, "--scheduler", scheduler, "--quiet", check=False)
    finally:
        for started_process in started:
            started_process.terminate()
            started_process.wait(timeout=60)
    assert proc.returncode == 0 and "failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
